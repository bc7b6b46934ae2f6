// A JavaScript wasi:http handler written against the interface itself rather than the fetch
// event: StarlingMonkey's fetch event answers once per instance, so this is how a JavaScript
// app serves from a reused instance.
import { Fields, OutgoingResponse, OutgoingBody, ResponseOutparam } from 'wasi:http/types@0.2.10';

let served = 0;
const encoder = new TextEncoder();

export const incomingHandler = {
  handle(request, responseOut) {
    served += 1;
    const headers = Fields.fromList([
      ['content-type', encoder.encode('text/plain')],
      ['x-instance-requests', encoder.encode(String(served))],
    ]);
    const response = new OutgoingResponse(headers);
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(encoder.encode('hello from javascript\n'));
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
