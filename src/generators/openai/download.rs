//! `data[].url` images, fetched after the answer: one GET each, within the pool's timeout and
//! without the API key, as the URL may name another host. Errors show the URL without its query
//! (signed URLs carry their signature there).
use super::answer::{plain_message, PixelBudget};
use super::{OpenAi, SERVICE};
use crate::error::{Error, RemoteError, RemoteFailure, Result};
use crate::generators::http::{self, HttpRequest, TransportError};
use crate::image::Image;

impl OpenAi {
    /// Fetches a `data[index].url` image. No key goes with it: the URL may name any host. Its
    /// size, read from its header, is taken from `budget` before it is decoded.
    pub(super) fn download(
        &self,
        index: usize,
        url: &str,
        budget: &mut PixelBudget,
    ) -> Result<Image> {
        let shown = shown_url(url);
        let failure = |kind, status, message: String| {
            Error::Remote(Box::new(RemoteError {
                kind,
                service: SERVICE.to_string(),
                endpoint: origin(url).to_string(),
                status,
                error_type: None,
                message: format!("downloading data[{index}].url {shown}: {message}"),
                attempts: 1,
            }))
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(failure(
                RemoteFailure::Error,
                None,
                "not an http(s) URL".into(),
            ));
        }
        let timeout = self.pool.config().timeout;
        let response = match http::send(&self.agent, url, &[], &HttpRequest::get(""), timeout) {
            Ok(response) => response,
            Err(TransportError::Timeout) => {
                return Err(failure(
                    RemoteFailure::Timeout,
                    None,
                    format!("no answer within {:.1} s", timeout.as_secs_f64()),
                ))
            }
            Err(TransportError::Failed(reason)) => {
                return Err(failure(RemoteFailure::Error, None, reason))
            }
            Err(TransportError::TooLarge(limit)) => {
                return Err(failure(
                    RemoteFailure::Error,
                    None,
                    format!("the image is larger than {} MiB", limit >> 20),
                ))
            }
        };
        if !(200..300).contains(&response.status) {
            return Err(failure(
                RemoteFailure::Error,
                Some(response.status),
                format!("HTTP {}: {}", response.status, response.text_excerpt()),
            ));
        }
        let not_an_image = |e: Error| {
            failure(
                RemoteFailure::Error,
                Some(response.status),
                format!("not an image: {}", plain_message(&e)),
            )
        };
        let (width, height) = Image::dimensions(&response.body).map_err(not_an_image)?;
        budget.take(width, height).map_err(|e| {
            failure(
                RemoteFailure::Error,
                Some(response.status),
                format!("the image {e}"),
            )
        })?;
        Image::decode(&response.body).map_err(not_an_image)
    }
}

/// `scheme://host[:port]` of a URL, for errors that must not show a signed URL's query.
pub(super) fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    &url[..end]
}

/// A URL without its query and fragment (signed download URLs carry their signature there).
fn shown_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    if end < url.len() {
        format!("{}?...", &url[..end])
    } else {
        url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_signature() {
        let url = "https://files.example.com/img/1.png?sig=SECRET&se=1";
        assert_eq!(origin(url), "https://files.example.com");
        assert_eq!(shown_url(url), "https://files.example.com/img/1.png?...");
    }
}
