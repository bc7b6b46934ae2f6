//! A request as the guest's wasi:http sees it.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};

use crate::http::{Request, request_body::RequestBody};

/// The request as wasi:http sees it. The URI stays in origin form when there is a Host header,
/// whose value (port included, as `wasmtime serve` passes it) becomes the authority. The body is
/// the request's own, or the stream it arrives on.
pub(super) fn to_hyper(
    req: Request,
    streamed: Option<RequestBody>,
) -> anyhow::Result<http::Request<UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>>> {
    let has_host = req.header("host").is_some();
    let mut headers = http::HeaderMap::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_maybe_shared(Bytes::from(value))?,
        );
    }
    let uri = if has_host {
        http::Uri::try_from(req.target)?
    } else {
        http::Uri::try_from(format!("http://localhost{}", req.target))?
    };
    let body = match streamed {
        Some(body) => body
            .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
            .boxed_unsync(),
        None => {
            let trailers = (!req.trailers.is_empty())
                .then(|| {
                    req.trailers
                        .into_iter()
                        .map(|(name, value)| {
                            Ok((
                                http::HeaderName::from_bytes(name.as_bytes())?,
                                http::HeaderValue::from_maybe_shared(Bytes::from(value))?,
                            ))
                        })
                        .collect::<anyhow::Result<http::HeaderMap>>()
                })
                .transpose()?;
            Full::new(Bytes::from(req.body))
                .map_err(|never: Infallible| match never {})
                .with_trailers(std::future::ready(trailers.map(Ok)))
                .boxed_unsync()
        }
    };
    let mut hyper_req = http::Request::new(body);
    *hyper_req.method_mut() = http::Method::from_bytes(req.method.as_bytes())?;
    *hyper_req.uri_mut() = uri;
    *hyper_req.headers_mut() = headers;
    Ok(hyper_req)
}
