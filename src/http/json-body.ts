// The JSON body parser. The official client sends cancel as POST with Content-Type: application/json and an EMPTY
// body, which Fastify's own parser refuses (FST_ERR_CTP_EMPTY_JSON_BODY): an empty body is no body here. The raw
// text is kept so a create forwards exactly what the client sent.
import fp from 'fastify-plugin';
import { GatewayError } from '../errors.js';
import { deeperThan } from '../lib/json-depth.js';

export default fp(
  async (app) => {
    app.decorateRequest('rawBody', undefined);
    app.removeContentTypeParser('application/json');
    const maxDepth = app.config.JSON_MAX_DEPTH;
    app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
      const text = body as string;
      if (text.trim() === '') return done(null, undefined);
      if (deeperThan(text, maxDepth)) {
        return done(new GatewayError('VALIDATION', `the request body nests deeper than JSON_MAX_DEPTH (${maxDepth}) levels`), undefined);
      }
      try {
        const parsed = JSON.parse(text);
        request.rawBody = text;
        done(null, parsed);
      } catch (err) {
        done(new GatewayError('BAD_REQUEST', `the request body is not valid JSON: ${(err as Error).message}`), undefined);
      }
    });
  },
  { name: 'json-body', dependencies: ['config'] },
);
