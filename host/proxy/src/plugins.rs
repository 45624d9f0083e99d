//! The plugin passes of the pipeline after `on-request`: the request body pass and the
//! response passes (`on-response`, then the response body), and how a plugin's output
//! becomes the request or response the proxy sends.

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::{Either, Full};

use super::body::ReceivedBody;
use super::forward::RequestBody;
use super::{buffer, headers, path, request_target, Exchange, Proxy, ProxyBody, ProxyError};
use crate::snapshot::Snapshot;
use sluice_plugin::bindings::{ClientInfo, RequestHead, ResponseHead};
use sluice_plugin::convert;
use sluice_plugin::stage::{
    PluginStage, RequestBodyDecision, ResponseBodyDecision, ResponseBodyIn, ResponseDecision,
};

impl Proxy {
    /// Reads the request body for the plugins that read it and runs their body
    /// hooks: the body to send upstream (replayable), or a plugin's answer.
    pub(super) async fn request_body_pass(
        &self,
        snapshot: &Snapshot,
        plugins: &mut PluginStage<'_>,
        client: &ClientInfo,
        parts: &mut http::request::Parts,
        body: ReceivedBody,
        exchange: &mut Exchange,
    ) -> Result<Result<RequestBody, Response<ProxyBody>>, ProxyError> {
        let max = plugins.request_body_max().unwrap_or(0);
        let read = buffer::request_body(body, max, snapshot.plugin_body_timeout).await?;
        let head = convert::request_head(parts);
        match plugins
            .run_request_body(client, &head, read, &mut exchange.trail)
            .await
        {
            RequestBodyDecision::Continue { body, replaced } => {
                if replaced {
                    // The upstream client writes the length of the new body.
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                Ok(Ok(RequestBody::Kept(body)))
            }
            RequestBodyDecision::Respond(response) => {
                let head = ResponseHead {
                    status: response.status,
                    headers: response.headers,
                };
                Ok(Err(complete_response(head, response.body.into())?))
            }
            RequestBodyDecision::Fail(failure) => Err(failure.into()),
        }
    }

    /// Runs the `on-response` hooks and then the response body hooks over `response`
    /// (upstream or plugin-made).
    pub(super) async fn respond_through_chain(
        &self,
        mut plugins: PluginStage<'_>,
        client: &ClientInfo,
        response: Response<ProxyBody>,
        exchange: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !plugins.has_response_hooks() {
            return Ok(response);
        }
        let (mut parts, mut body) = response.into_parts();
        if plugins.has_response_head_hooks() {
            let head = ResponseHead {
                status: parts.status.as_u16(),
                headers: convert::headers_to_wit(&parts.headers),
            };
            match plugins
                .run_response(client, head, &mut exchange.trail)
                .await
            {
                ResponseDecision::Continue(head) => {
                    parts.status = status_from(head.status)?;
                    apply_headers(&mut parts.headers, head.headers)?;
                }
                ResponseDecision::Replace(response) => {
                    let head = ResponseHead {
                        status: response.status,
                        headers: response.headers,
                    };
                    (parts, body) = complete_response(head, response.body.into())?.into_parts();
                }
                ResponseDecision::Fail(failure) => return Err(failure.into()),
            }
        }
        let bodiless = exchange.method == Method::HEAD
            || parts.status.is_informational()
            || matches!(
                parts.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
        let max = match plugins.response_body_max() {
            Some(max) if !bodiless => max,
            _ => return Ok(Response::from_parts(parts, body)),
        };
        let (read, body) = match buffer::response_body(body, max).await? {
            buffer::ResponseBody::Whole(bytes) => (
                ResponseBodyIn::Whole(bytes.clone()),
                Either::Right(Full::new(bytes)),
            ),
            buffer::ResponseBody::TooLarge(body) => (ResponseBodyIn::TooLarge, body),
        };
        let head = ResponseHead {
            status: parts.status.as_u16(),
            headers: convert::headers_to_wit(&parts.headers),
        };
        match plugins
            .run_response_body(client, head, read, &mut exchange.trail)
            .await
        {
            ResponseBodyDecision::Unchanged => Ok(Response::from_parts(parts, body)),
            ResponseBodyDecision::Replace { head, body } => complete_response(head, body),
            ResponseBodyDecision::TooLarge { plugin, limit } => {
                Err(ProxyError::ResponseBodyTooLarge {
                    plugin: plugin.to_string(),
                    limit,
                })
            }
            ResponseBodyDecision::Fail(failure) => Err(failure.into()),
        }
    }
}

/// Applies a plugin-rewritten request head to the outgoing request.
pub(super) fn apply_request_head(
    parts: &mut http::request::Parts,
    head: RequestHead,
    merge_slashes: bool,
) -> Result<(), ProxyError> {
    let invalid = |what: &str| ProxyError::InvalidPluginOutput(what.to_string());
    parts.method = convert::method(&head.method).map_err(ProxyError::InvalidPluginOutput)?;
    // A rewritten path is held to the same rules as the client's.
    let path = path::normalize(&head.path, merge_slashes)
        .map_err(|e| invalid(&format!("path {:?}: {e}", head.path)))?
        .path;
    let path_and_query = request_target(path, Some(head.query.as_str()).filter(|q| !q.is_empty()))
        .map_err(|_| invalid("path or query"))?;
    parts.uri = Uri::from(path_and_query);
    apply_headers(&mut parts.headers, head.headers)?;
    Ok(())
}

/// A plugin's headers onto `headers`; the host keeps its own framing and hop-by-hop ones.
fn apply_headers(headers: &mut HeaderMap, list: Vec<(String, Vec<u8>)>) -> Result<(), ProxyError> {
    convert::apply_headers(headers, list, headers::is_host_owned)
        .map_err(ProxyError::InvalidPluginOutput)
}

fn status_from(code: u16) -> Result<StatusCode, ProxyError> {
    convert::status(code).map_err(ProxyError::InvalidPluginOutput)
}

/// A complete response built by a plugin.
pub(super) fn complete_response(
    head: ResponseHead,
    body: Bytes,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status_from(head.status)?;
    apply_headers(response.headers_mut(), head.headers)?;
    Ok(response)
}
