addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  switch (url.pathname) {
    case '/':
      return new Response('hello from javascript\n', { headers: { 'content-type': 'text/plain' } });
    case '/echo':
      return new Response(await request.text(), { status: 201, headers: { 'x-method': request.method } });
    case '/headers':
      return new Response(request.headers.get('x-custom') || 'none', { headers: { 'x-custom': 'seen' } });
    default:
      return new Response('no such route\n', { status: 404 });
  }
}
