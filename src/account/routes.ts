// What a tenant may see of the shared account: its own identity. Routes that act on the account as a whole are
// refused with a clear problem rather than a 404, so a client's author knows it is a policy, not a typo.
import type { FastifyInstance } from 'fastify';
import { GatewayError } from '../errors.js';

const REFUSED: [methods: ('GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE')[], urls: string[], why: string][] = [
  [['GET', 'POST', 'PATCH', 'PUT', 'DELETE'], ['/deployments', '/deployments/*'], 'deployments belong to the whole shared account'],
  [['GET', 'POST', 'PATCH', 'PUT', 'DELETE'], ['/trainings', '/trainings/*'], 'trainings run on, and are listed for, the whole shared account'],
  [['POST'], ['/models/:owner/:name/versions/:id/trainings'], 'trainings run on, and are listed for, the whole shared account'],
  [['POST'], ['/models'], 'creating models changes the whole shared account'],
  [['PATCH', 'PUT', 'DELETE'], ['/models/:owner/:name'], 'changing models changes the whole shared account'],
  [['DELETE'], ['/models/:owner/:name/versions/:id'], 'deleting versions changes the whole shared account'],
  [['GET'], ['/webhooks/default/secret'], 'the account\'s webhook secret would let any tenant forge webhooks for every tenant'],
];

export async function accountRoutes(app: FastifyInstance): Promise<void> {
  // Replicate's account object, naming the caller's tenant: the upstream account is shared and not the caller's.
  app.get('/account', async (request) => {
    const { tenant, token } = request.principal!;
    return { type: 'organization', username: tenant.id, name: tenant.id, github_url: null, via_token: token !== undefined };
  });

  for (const [methods, urls, why] of REFUSED) {
    for (const url of urls) {
      app.route({
        method: methods,
        url,
        handler: async (request) => {
          throw new GatewayError('FORBIDDEN', `${request.method} /replicate/v1${url.replace('/*', '/…')} is not offered through this gateway: ${why}`);
        },
      });
    }
  }
}
