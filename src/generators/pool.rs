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

/// How long a key stays out of the rotation after its quota ran out or it was refused: long
/// enough not to hammer a dead key, short enough that a daily quota's reset or a fixed key is
/// noticed by a long-running process.
const OUT_OF_ROTATION: Duration = Duration::from_secs(3600);

/// Per-endpoint health, guarded by the pool's lock.
#[derive(Debug, Default)]
struct Health {
    in_flight: usize,
    /// Failures in a row that say the endpoint is unwell (not 429s, which say it is busy).
    consecutive_failures: u32,
    /// The breaker is open until then; once that has passed, the next call is its one trial.
    open_until: Option<Instant>,
    /// Why and until when the key is out of the rotation.
    exhausted: Option<(Failure, Instant)>,
    calls: u64,
}

impl Health {
    fn usable(&self, now: Instant) -> bool {
        self.exhausted
            .as_ref()
            .is_none_or(|(_, until)| *until <= now)
    }
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
                exhausted: !h.usable(now),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Health>> {
        // Health is plain counters: a panic elsewhere cannot leave it inconsistent.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` until an endpoint answers with success, a final failure, or the retries run
    /// out. `cancelled` is polled while waiting for a free endpoint and between attempts.
    pub(crate) fn call(
        &self,
        service: &dyn Service,
        request: &HttpRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<HttpResponse> {
        let mut attempts = 0u32;
        let mut retries = 0u32;
        // The last real failure: what a caller sees if the pool runs out of endpoints mid-way.
        let mut last: Option<Error> = None;
        // Endpoints whose key this call found spent or refused: never asked again by this call.
        let mut spent: Vec<usize> = Vec::new();
        loop {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let slot = match self.acquire(service, attempts, &spent, cancelled) {
                Ok(slot) => slot,
                Err(err) => return Err(last.unwrap_or(err)),
            };
            let endpoint = &self.endpoints[slot.index];
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
            )
            .map(|response| self.scrub_error_body(response));
            let verdict = match &sent {
                Ok(response) => service.classify(response),
                Err(err) => transport_verdict(err, self.config.timeout),
            };
            // OpenAI quotes a wrong key back, and a proxy might echo headers: no key may reach
            // an error message.
            let verdict = self.scrub(verdict);
            let index = slot.index;
            slot.release(&verdict);
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
                // Another endpoint may still serve the call; `acquire` says when none can.
                Verdict::KeyExhausted(failure) => {
                    spent.push(index);
                    last = Some(error(failure));
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
                    last = Some(error(failure));
                    self.sleep(delay, cancelled)?;
                }
            }
        }
    }

    /// An error answer with the keys removed from its body, before the service reads (and cuts)
    /// it: a key split by a cut could not be found afterwards.
    fn scrub_error_body(&self, mut response: HttpResponse) -> HttpResponse {
        if !(200..300).contains(&response.status) {
            let text = String::from_utf8_lossy(&response.body).into_owned();
            response.body = self.clean(text).into_bytes();
        }
        response
    }

    /// `text` with every endpoint's key replaced by `<redacted>`.
    fn clean(&self, text: String) -> String {
        self.endpoints
            .iter()
            .filter_map(|e| e.key.as_ref().map(ApiKey::expose))
            // A very short key would blank out ordinary words; real keys are long.
            .filter(|k| k.len() >= 4)
            .fold(text, |text, key| text.replace(key, "<redacted>"))
    }

    /// The verdict with every endpoint's key replaced by `<redacted>` in what the service said.
    fn scrub(&self, verdict: Verdict) -> Verdict {
        let clean = |text: String| self.clean(text);
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

    /// Picks an endpoint and counts the call in flight: among keys in the rotation (all of them
    /// when every key is out, so a reset quota or a fixed key is noticed at once) that this call
    /// has not found `spent`, and breakers not open, one whose breaker is due its trial call, else
    /// the one with the fewest calls in flight, then the fewest calls overall (so load spreads).
    /// Waits while every usable endpoint is at its cap, until the timeout or `cancelled`.
    fn acquire(
        &self,
        service: &dyn Service,
        attempt: u32,
        spent: &[usize],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Slot<'_>> {
        let deadline = Instant::now() + self.config.timeout;
        let mut health = self.lock();
        loop {
            let now = Instant::now();
            let remote = |kind, endpoint: usize, error_type: Option<&str>, message: String| {
                Error::Remote(Box::new(RemoteError {
                    kind,
                    service: service.name().to_string(),
                    endpoint: self.endpoints[endpoint].base_url.clone(),
                    status: None,
                    error_type: error_type.map(str::to_string),
                    message,
                    attempts: attempt,
                }))
            };
            let untried = (0..self.endpoints.len()).filter(|i| !spent.contains(i));
            let in_rotation: Vec<usize> =
                untried.clone().filter(|&i| health[i].usable(now)).collect();
            let usable = if in_rotation.is_empty() {
                untried.collect()
            } else {
                in_rotation
            };
            if usable.is_empty() {
                // Say why, in the words of the failure that took the first key out.
                let reasons: Vec<String> = health
                    .iter()
                    .zip(&self.endpoints)
                    .filter_map(|(h, e)| {
                        let (failure, _) = h.exhausted.as_ref()?;
                        Some(format!("{}: {}", e.base_url, failure.message))
                    })
                    .collect();
                let first = health.iter().find_map(|h| h.exhausted.as_ref());
                let kind = first.map_or(RemoteFailure::RateLimited, |(f, _)| f.kind);
                let error_type = first.and_then(|(f, _)| f.error_type.clone());
                return Err(remote(
                    kind,
                    0,
                    error_type.as_deref(),
                    format!(
                        "every endpoint's key is out of the rotation ({})",
                        reasons.join("; ")
                    ),
                ));
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
                return Err(remote(
                    RemoteFailure::Error,
                    usable[0],
                    Some("circuit_open"),
                    format!(
                        "every endpoint failed {} times in a row; the next is tried again in \
                         {reopen:.1} s",
                        self.config.breaker_failures
                    ),
                ));
            }
            let best = closed
                .iter()
                .copied()
                .filter(|&i| health[i].in_flight < self.endpoints[i].max_in_flight)
                .min_by_key(|&i| {
                    let h = &health[i];
                    let trial_due = h.open_until.is_some();
                    (!trial_due, h.in_flight, h.calls)
                });
            if let Some(i) = best {
                let h = &mut health[i];
                h.in_flight += 1;
                h.calls += 1;
                if h.open_until.is_some() {
                    // Half-open: this call is the one trial; the breaker stays open for the others
                    // until it answers.
                    h.open_until = Some(now + self.config.breaker_cooldown);
                }
                if h.exhausted.as_ref().is_some_and(|(_, until)| *until <= now) {
                    h.exhausted = None;
                }
                return Ok(Slot {
                    pool: self,
                    index: i,
                    released: false,
                });
            }
            if cancelled() {
                return Err(Error::Cancelled);
            }
            if now >= deadline {
                return Err(remote(
                    RemoteFailure::Timeout,
                    closed[0],
                    None,
                    "every endpoint stayed at its max_in_flight for the whole timeout".into(),
                ));
            }
            // Short waits, so a cancelled request stops waiting soon.
            let wait = (deadline - now).min(Duration::from_millis(50));
            health = self
                .freed
                .wait_timeout(health, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends a call on endpoint `index`: updates its breaker and rotation state (when the call got
    /// a verdict) and wakes the calls waiting for a slot.
    fn release(&self, index: usize, verdict: Option<&Verdict>) {
        let mut health = self.lock();
        let h = &mut health[index];
        h.in_flight -= 1;
        match verdict {
            // An answer, even a final error, says the endpoint is up.
            Some(Verdict::Success | Verdict::Fail(_)) => {
                h.consecutive_failures = 0;
                h.open_until = None;
            }
            Some(Verdict::KeyExhausted(failure)) => {
                h.exhausted = Some((failure.clone(), Instant::now() + OUT_OF_ROTATION));
            }
            // 429 means busy, not unwell: it is retried, never counted toward the breaker.
            Some(Verdict::Retry { failure, .. }) if failure.kind == RemoteFailure::RateLimited => {}
            Some(Verdict::Retry { .. }) => {
                h.consecutive_failures += 1;
                if h.consecutive_failures >= self.config.breaker_failures {
                    h.open_until = Some(Instant::now() + self.config.breaker_cooldown);
                }
            }
            // No verdict: the call unwound (a panic); only the slot is given back.
            None => {}
        }
        drop(health);
        // Every waiter re-checks: a spent key or an opened breaker may end their wait too.
        self.freed.notify_all();
    }
}

/// A call's hold on one endpoint's slot; given back when dropped, so a panic while reading an
/// answer cannot leak it.
struct Slot<'a> {
    pool: &'a Pool,
    index: usize,
    released: bool,
}

impl Slot<'_> {
    fn release(mut self, verdict: &Verdict) {
        self.released = true;
        self.pool.release(self.index, Some(verdict));
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.pool.release(self.index, None);
        }
    }
}

/// What the pool makes of a call that got no answer.
fn transport_verdict(err: &TransportError, timeout: Duration) -> Verdict {
    let failure = |kind, message| Failure {
        kind,
        status: None,
        error_type: None,
        message,
    };
    match err {
        TransportError::Timeout => Verdict::Retry {
            after: None,
            failure: failure(
                RemoteFailure::Timeout,
                format!("no answer within {:.1} s", timeout.as_secs_f64()),
            ),
        },
        // Asking again would download it again.
        TransportError::TooLarge(limit) => Verdict::Fail(failure(
            RemoteFailure::Error,
            format!("the answer is larger than {} MiB", limit >> 20),
        )),
        TransportError::Failed(reason) => Verdict::Retry {
            after: None,
            failure: failure(RemoteFailure::Error, format!("request failed: {reason}")),
        },
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
