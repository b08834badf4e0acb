//! The endpoint pool of a remote generator (the ancestor's api_pool): several (base URL, key)
//! pairs; each call goes to the least busy healthy endpoint; failures are retried with exponential
//! backoff and jitter (or the delay the server asks for); a key whose quota is exhausted leaves the
//! rotation; an endpoint that keeps failing is skipped for a cool-down (a circuit breaker); each
//! endpoint takes at most `max_in_flight` calls at once.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::http::{self, HttpRequest, HttpResponse, TransportError};
use crate::error::{Error, RemoteError, RemoteFailure, Result};

/// A secret sent in a header; shown nowhere (`Debug` prints a placeholder).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// One place a remote generator can send calls to.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// E.g. `https://api.openai.com/v1`; paths are appended to it.
    pub base_url: String,
    pub key: Option<ApiKey>,
    /// Most calls in flight at once on this endpoint.
    pub max_in_flight: usize,
}

/// Retry, timeout and breaker settings shared by a pool's endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Limit of one call (connect, send, wait, read).
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before retry n (from 0): min(initial * 2^n, max), less up to a quarter of jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A server's `retry-after` longer than this is not waited for: the call fails instead.
    pub max_retry_after: Duration,
    /// Consecutive failures that open an endpoint's breaker, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl Default for PoolConfig {
    /// The official OpenAI client's retry policy (2 retries, 0.5 s doubling to 8 s, retry-after
    /// honoured up to 120 s) with a 120 s call timeout.
    fn default() -> Self {
        PoolConfig {
            timeout: Duration::from_secs(120),
            max_retries: 2,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(120),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// What a service makes of one answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Success,
    /// Worth another attempt (408/409/429/5xx), after `after` when the server said so.
    Retry {
        after: Option<Duration>,
        failure: Failure,
    },
    /// The key's quota is gone (429 `insufficient_quota`, a daily quota): never retried with this
    /// key; the call moves on to another endpoint.
    KeyExhausted(Failure),
    /// A final answer: bad request, auth, a safety block, an unusable body.
    Fail(Failure),
}

/// The service's side of a failure, as the error will carry it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub kind: RemoteFailure,
    pub status: Option<u16>,
    pub error_type: Option<String>,
    pub message: String,
}

/// How one service authenticates and reads answers; the pool does the rest.
pub(crate) trait Service: Sync {
    /// `openai`, `gemini`: the name errors carry.
    fn name(&self) -> &'static str;
    /// The header that carries `key`.
    fn auth_header(&self, key: &ApiKey) -> (&'static str, String);
    fn classify(&self, response: &HttpResponse) -> Verdict;
}

/// A service's check call (`dg doctor --backend`): any 2xx answer is success, and a failure is
/// read as the service reads it.
pub(crate) struct Probe<'a>(pub &'a dyn Service);

impl Service for Probe<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn auth_header(&self, key: &ApiKey) -> (&'static str, String) {
        self.0.auth_header(key)
    }

    fn classify(&self, response: &HttpResponse) -> Verdict {
        if (200..300).contains(&response.status) {
            Verdict::Success
        } else {
            self.0.classify(response)
        }
    }
}

/// Per-endpoint health, guarded by the pool's lock.
#[derive(Debug, Default)]
struct Health {
    in_flight: usize,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// Why the key left the rotation.
    exhausted: Option<String>,
    calls: u64,
}

/// Endpoints with their health; shared by every call of one generator.
pub struct Pool {
    endpoints: Vec<Endpoint>,
    config: PoolConfig,
    health: Mutex<Vec<Health>>,
    freed: Condvar,
    agent: ureq::Agent,
    /// Jitter state (xorshift), so backoff needs no RNG dependency.
    jitter: AtomicU64,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.endpoints)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Per-endpoint counters, for tests and `dg doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub base_url: String,
    pub calls: u64,
    pub breaker_open: bool,
    pub exhausted: bool,
}

impl Pool {
    pub fn new(endpoints: Vec<Endpoint>, config: PoolConfig) -> Result<Pool> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArg(
                "a remote generator needs an endpoint".into(),
            ));
        }
        if let Some(e) = endpoints.iter().find(|e| e.max_in_flight == 0) {
            return Err(Error::InvalidArg(format!(
                "endpoint {}: max_in_flight must be at least 1",
                e.base_url
            )));
        }
        let health = endpoints.iter().map(|_| Health::default()).collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Ok(Pool {
            endpoints,
            config,
            health: Mutex::new(health),
            freed: Condvar::new(),
            agent: http::agent(),
            jitter: AtomicU64::new(seed),
        })
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub fn stats(&self) -> Vec<EndpointStats> {
        let now = Instant::now();
        let health = self.lock();
        self.endpoints
            .iter()
            .zip(health.iter())
            .map(|(e, h)| EndpointStats {
                base_url: e.base_url.clone(),
                calls: h.calls,
                breaker_open: h.open_until.is_some_and(|t| t > now),
                exhausted: h.exhausted.is_some(),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Health>> {
        // Health is plain counters: a panic elsewhere cannot leave it inconsistent.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` until an endpoint answers with success, a final failure, or the retries run
    /// out. `cancelled` is polled while waiting between attempts.
    pub(crate) fn call(
        &self,
        service: &dyn Service,
        request: &HttpRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<HttpResponse> {
        let mut attempts = 0u32;
        let mut retries = 0u32;
        loop {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let index = self.acquire(service, attempts)?;
            let endpoint = &self.endpoints[index];
            attempts += 1;
            let auth = endpoint.key.as_ref().map(|k| service.auth_header(k));
            let headers: Vec<(&str, &str)> = auth
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            let sent = http::send(
                &self.agent,
                &endpoint.base_url,
                &headers,
                request,
                self.config.timeout,
            );
            let verdict = match &sent {
                Ok(response) => service.classify(response),
                Err(TransportError::Timeout) => Verdict::Retry {
                    after: None,
                    failure: Failure {
                        kind: RemoteFailure::Timeout,
                        status: None,
                        error_type: None,
                        message: format!(
                            "no answer within {:.1} s",
                            self.config.timeout.as_secs_f64()
                        ),
                    },
                },
                Err(TransportError::Failed(reason)) => Verdict::Retry {
                    after: None,
                    failure: Failure {
                        kind: RemoteFailure::Error,
                        status: None,
                        error_type: None,
                        message: format!("request failed: {reason}"),
                    },
                },
            };
            // OpenAI quotes a wrong key back, and a proxy might echo headers: no key may reach
            // an error message.
            let verdict = self.scrub(verdict);
            self.release(index, &verdict);
            let error = |failure: Failure| {
                Error::Remote(Box::new(RemoteError {
                    kind: failure.kind,
                    service: service.name().to_string(),
                    endpoint: endpoint.base_url.clone(),
                    status: failure.status,
                    error_type: failure.error_type,
                    message: failure.message,
                    attempts,
                }))
            };
            match verdict {
                Verdict::Success => {
                    return sent.map_err(|_| Error::internal(service.name(), "lost response"))
                }
                Verdict::Fail(failure) => return Err(error(failure)),
                Verdict::KeyExhausted(failure) => {
                    if !self.any_usable() {
                        return Err(error(failure));
                    }
                }
                Verdict::Retry { after, failure } => {
                    if retries >= self.config.max_retries {
                        return Err(error(failure));
                    }
                    let delay = match after {
                        Some(after) if after > self.config.max_retry_after => {
                            return Err(error(Failure {
                                message: format!(
                                    "{} (the server asks to retry after {:.0} s, more than the \
                                     {:.0} s waited for)",
                                    failure.message,
                                    after.as_secs_f64(),
                                    self.config.max_retry_after.as_secs_f64()
                                ),
                                ..failure
                            }))
                        }
                        Some(after) => after,
                        None => self.backoff(retries),
                    };
                    retries += 1;
                    self.sleep(delay, cancelled)?;
                }
            }
        }
    }

    /// The verdict with every endpoint's key replaced by `<redacted>` in what the service said.
    fn scrub(&self, verdict: Verdict) -> Verdict {
        let keys: Vec<&str> = self
            .endpoints
            .iter()
            .filter_map(|e| e.key.as_ref().map(ApiKey::expose))
            // A very short key would blank out ordinary words; real keys are long.
            .filter(|k| k.len() >= 4)
            .collect();
        let clean = |text: String| {
            keys.iter()
                .fold(text, |text, key| text.replace(key, "<redacted>"))
        };
        let scrub = |failure: Failure| Failure {
            message: clean(failure.message),
            error_type: failure.error_type.map(clean),
            ..failure
        };
        match verdict {
            Verdict::Success => Verdict::Success,
            Verdict::Retry { after, failure } => Verdict::Retry {
                after,
                failure: scrub(failure),
            },
            Verdict::KeyExhausted(failure) => Verdict::KeyExhausted(scrub(failure)),
            Verdict::Fail(failure) => Verdict::Fail(scrub(failure)),
        }
    }

    /// Exponential backoff with up to 25% jitter: min(initial * 2^n, max) * (1 - 0.25 * r).
    fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << retry.min(16))
            .min(self.config.backoff_max);
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        let r = (x >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 - 0.25 * r)
    }

    fn sleep(&self, delay: Duration, cancelled: &dyn Fn() -> bool) -> Result<()> {
        let until = Instant::now() + delay;
        loop {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    fn any_usable(&self) -> bool {
        self.lock().iter().any(|h| h.exhausted.is_none())
    }

    /// Picks an endpoint and counts the call in flight: among keys not exhausted and breakers not
    /// open, one whose breaker is due a trial call, else the one with the fewest calls in flight,
    /// then the fewest calls overall (so load spreads). Waits while every usable endpoint is at
    /// its cap.
    fn acquire(&self, service: &dyn Service, attempt: u32) -> Result<usize> {
        let deadline = Instant::now() + self.config.timeout;
        let mut health = self.lock();
        loop {
            let now = Instant::now();
            let usable: Vec<usize> = (0..self.endpoints.len())
                .filter(|&i| health[i].exhausted.is_none())
                .collect();
            if usable.is_empty() {
                let reasons: Vec<String> = health
                    .iter()
                    .zip(&self.endpoints)
                    .filter_map(|(h, e)| Some(format!("{}: {}", e.base_url, h.exhausted.as_ref()?)))
                    .collect();
                return Err(Error::Remote(Box::new(RemoteError {
                    kind: RemoteFailure::RateLimited,
                    service: service.name().to_string(),
                    endpoint: self.endpoints[0].base_url.clone(),
                    status: None,
                    error_type: Some("quota_exhausted".into()),
                    message: format!(
                        "every endpoint's key has exhausted its quota ({})",
                        reasons.join("; ")
                    ),
                    attempts: attempt,
                })));
            }
            let closed: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|&i| health[i].open_until.is_none_or(|t| t <= now))
                .collect();
            if closed.is_empty() {
                let reopen = usable
                    .iter()
                    .filter_map(|&i| health[i].open_until)
                    .min()
                    .map_or(0.0, |t| (t - now).as_secs_f64());
                return Err(Error::Remote(Box::new(RemoteError {
                    kind: RemoteFailure::Error,
                    service: service.name().to_string(),
                    endpoint: self.endpoints[usable[0]].base_url.clone(),
                    status: None,
                    error_type: Some("circuit_open".into()),
                    message: format!(
                        "every endpoint failed {} times in a row; the next is tried again in {reopen:.1} s",
                        self.config.breaker_failures
                    ),
                    attempts: attempt,
                })));
            }
            let best = closed
                .iter()
                .copied()
                .filter(|&i| health[i].in_flight < self.endpoints[i].max_in_flight)
                .min_by_key(|&i| {
                    let h = &health[i];
                    // A breaker whose cool-down is over gets its trial call first; then the
                    // fewest calls in flight, then the fewest calls so far (round robin).
                    let trial_due = h.open_until.is_some();
                    (!trial_due, h.in_flight, h.calls)
                });
            if let Some(i) = best {
                let h = &mut health[i];
                h.in_flight += 1;
                h.calls += 1;
                if h.open_until.is_some_and(|t| t <= now) {
                    // Half-open: this call is the trial; failing it reopens the breaker at once.
                    h.open_until = None;
                }
                return Ok(i);
            }
            if now >= deadline {
                return Err(Error::Remote(Box::new(RemoteError {
                    kind: RemoteFailure::Timeout,
                    service: service.name().to_string(),
                    endpoint: self.endpoints[closed[0]].base_url.clone(),
                    status: None,
                    error_type: None,
                    message: "every endpoint stayed at its max_in_flight for the whole timeout"
                        .into(),
                    attempts: attempt,
                })));
            }
            health = self
                .freed
                .wait_timeout(health, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends a call: updates the endpoint's breaker and quota state and wakes a waiting call.
    fn release(&self, index: usize, verdict: &Verdict) {
        let mut health = self.lock();
        let h = &mut health[index];
        h.in_flight -= 1;
        match verdict {
            Verdict::Success => {
                h.consecutive_failures = 0;
                h.open_until = None;
            }
            Verdict::KeyExhausted(failure) => h.exhausted = Some(failure.message.clone()),
            // A final failure says the request was bad, not that the endpoint is unwell.
            Verdict::Fail(_) => {}
            Verdict::Retry { .. } => {
                h.consecutive_failures += 1;
                if h.consecutive_failures >= self.config.breaker_failures {
                    h.open_until = Some(Instant::now() + self.config.breaker_cooldown);
                }
            }
        }
        drop(health);
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_show_in_debug_output() {
        let endpoint = Endpoint {
            base_url: "https://api.example.com/v1".into(),
            key: Some(ApiKey::new("sk-secret-123")),
            max_in_flight: 1,
        };
        let pool = Pool::new(vec![endpoint.clone()], PoolConfig::default()).unwrap();
        for text in [format!("{endpoint:?}"), format!("{pool:?}")] {
            assert!(!text.contains("sk-secret"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn keys_are_scrubbed_from_what_services_say() {
        let endpoint = |key: &str| Endpoint {
            base_url: "http://127.0.0.1:9".into(),
            key: Some(ApiKey::new(key)),
            max_in_flight: 1,
        };
        let pool = Pool::new(
            vec![endpoint("sk-secret-123"), endpoint("g-other-456")],
            PoolConfig::default(),
        )
        .unwrap();
        let verdict = pool.scrub(Verdict::Fail(Failure {
            kind: RemoteFailure::Error,
            status: Some(401),
            error_type: Some("invalid_api_key sk-secret-123".into()),
            message: "Incorrect API key provided: sk-secret-123 (also g-other-456)".into(),
        }));
        let Verdict::Fail(f) = verdict else {
            panic!("still final")
        };
        assert_eq!(
            f.message,
            "Incorrect API key provided: <redacted> (also <redacted>)"
        );
        assert_eq!(f.error_type.as_deref(), Some("invalid_api_key <redacted>"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let config = PoolConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(700),
            ..PoolConfig::default()
        };
        let pool = Pool::new(
            vec![Endpoint {
                base_url: "http://127.0.0.1:9".into(),
                key: None,
                max_in_flight: 1,
            }],
            config,
        )
        .unwrap();
        for (retry, full) in [(0, 100), (1, 200), (2, 400), (3, 700), (10, 700)] {
            for _ in 0..50 {
                let d = pool.backoff(retry).as_secs_f64() * 1000.0;
                let full = full as f64;
                assert!(d <= full && d >= full * 0.75 - 1e-9, "retry {retry}: {d}");
            }
        }
    }

    #[test]
    fn empty_pools_and_zero_caps_are_invalid() {
        assert!(Pool::new(Vec::new(), PoolConfig::default()).is_err());
        let zero = Endpoint {
            base_url: "http://x".into(),
            key: None,
            max_in_flight: 0,
        };
        let err = Pool::new(vec![zero], PoolConfig::default()).unwrap_err();
        assert!(err.to_string().contains("max_in_flight"), "{err}");
    }
}
