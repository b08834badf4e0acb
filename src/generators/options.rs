//! A remote generator's settings: string keys and values (the C ABI's builder, the CLI, a server),
//! completed from `DG_<BACKEND>_*` environment variables and an optional JSON pool file.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::pool::{ApiKey, Endpoint, PoolConfig};
use crate::error::{Error, Result};

/// Keys every remote backend takes.
const COMMON_KEYS: &[&str] = &[
    "base_url",
    "api_key",
    "model",
    "timeout_s",
    "max_retries",
    "max_in_flight",
    "backoff_s",
    "max_backoff_s",
    "breaker_failures",
    "breaker_cooldown_s",
    "pool_file",
];

/// String-keyed settings for [`super::remote`]. Keys: `base_url`, `api_key`, `model`,
/// `timeout_s`, `max_retries`, `max_in_flight` (per endpoint), `backoff_s` and `max_backoff_s`
/// (the first retry's delay and the cap it doubles to), `breaker_failures` and
/// `breaker_cooldown_s` (failures in a row that take an endpoint out, and for how long),
/// `pool_file` (JSON, several endpoints), plus each backend's own (docs/backends.md). `Debug`
/// never shows the key.
#[derive(Clone, Default, PartialEq)]
pub struct GeneratorOptions {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for GeneratorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .values
            .iter()
            .map(|(k, v)| {
                let v = if k == "api_key" { "<redacted>" } else { v };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("GeneratorOptions")
            .field("values", &shown)
            .finish()
    }
}

impl GeneratorOptions {
    pub fn new() -> GeneratorOptions {
        GeneratorOptions::default()
    }

    /// Sets `key` (checked against the backend when the generator is made); an empty value
    /// removes it.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        if value.is_empty() {
            self.values.remove(key);
        } else {
            self.values.insert(key.to_string(), value.to_string());
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// Settings resolved for one backend.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub endpoints: Vec<Endpoint>,
    pub pool: PoolConfig,
    pub model: Option<String>,
    /// The backend's own keys (`quality`, `api_version`, ...), already checked by name.
    pub extra: BTreeMap<String, String>,
}

impl Resolved {
    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra.get(key).map(String::as_str)
    }
}

/// A pool file: `{"endpoints": [{"base_url": ..., "api_key_env": "NAME"}], "timeout_s": 60}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    endpoints: Vec<PoolFileEndpoint>,
    timeout_s: Option<f64>,
    max_retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFileEndpoint {
    base_url: String,
    api_key: Option<String>,
    /// Name of an environment variable holding the key, so the file need not hold secrets.
    api_key_env: Option<String>,
    max_in_flight: Option<usize>,
}

impl GeneratorOptions {
    /// Resolves the options of `backend` (`openai`, ...): a key set here wins over
    /// `DG_<BACKEND>_<KEY>` from `env`; `own_keys` are the backend's extra keys; `default_url` is
    /// its public API.
    pub(crate) fn resolve(
        &self,
        backend: &str,
        own_keys: &[&str],
        default_url: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Resolved> {
        if let Some(key) = self
            .values
            .keys()
            .find(|k| !COMMON_KEYS.contains(&k.as_str()) && !own_keys.contains(&k.as_str()))
        {
            return Err(Error::InvalidArg(format!(
                "unknown {backend} option `{key}` (expected {}, {})",
                COMMON_KEYS.join(", "),
                own_keys.join(", ")
            )));
        }
        let prefix = format!("DG_{}_", backend.to_ascii_uppercase());
        let get = |key: &str| -> Option<String> {
            self.get(key)
                .map(str::to_string)
                .or_else(|| env(&format!("{prefix}{}", key.to_ascii_uppercase())))
                .filter(|v| !v.is_empty())
        };
        // DG_<BACKEND>_TIMEOUT is the documented spelling; timeout_s is the option key.
        let timeout = get("timeout_s").or_else(|| env(&format!("{prefix}TIMEOUT")));
        let mut pool = PoolConfig::default();
        let pool_file = get("pool_file")
            .map(|path| read_pool_file(Path::new(&path)))
            .transpose()?;
        if let Some(file) = &pool_file {
            if let Some(t) = file.timeout_s {
                pool.timeout = seconds("timeout_s", &t.to_string())?;
            }
            if let Some(n) = file.max_retries {
                pool.max_retries = n;
            }
        }
        if let Some(t) = timeout {
            pool.timeout = seconds("timeout_s", &t)?;
        }
        if let Some(n) = get("max_retries") {
            pool.max_retries = n.trim().parse().map_err(|_| {
                Error::InvalidArg(format!("max_retries `{n}` is not a non-negative integer"))
            })?;
        }
        if let Some(s) = get("backoff_s") {
            pool.backoff_initial = seconds("backoff_s", &s)?;
        }
        if let Some(s) = get("max_backoff_s") {
            pool.backoff_max = seconds("max_backoff_s", &s)?;
        }
        if let Some(s) = get("breaker_cooldown_s") {
            pool.breaker_cooldown = seconds("breaker_cooldown_s", &s)?;
        }
        if let Some(n) = get("breaker_failures") {
            pool.breaker_failures = match n.trim().parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::InvalidArg(format!(
                        "breaker_failures `{n}` is not a positive integer"
                    )))
                }
            };
        }
        let max_in_flight = match get("max_in_flight") {
            Some(n) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::InvalidArg(format!(
                        "max_in_flight `{n}` is not a positive integer"
                    )))
                }
            },
            None => 4,
        };
        let endpoints = match pool_file {
            Some(file) => file
                .endpoints
                .into_iter()
                .map(|e| {
                    let key = match (e.api_key, e.api_key_env) {
                        (Some(key), _) => Some(key),
                        (None, Some(var)) => Some(env(&var).ok_or_else(|| {
                            Error::InvalidArg(format!(
                                "pool file endpoint {}: environment variable {var} is not set",
                                e.base_url
                            ))
                        })?),
                        (None, None) => None,
                    };
                    Ok(Endpoint {
                        base_url: check_url(&e.base_url)?,
                        key: key.map(ApiKey::new),
                        max_in_flight: e.max_in_flight.unwrap_or(max_in_flight),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![Endpoint {
                base_url: check_url(&get("base_url").unwrap_or_else(|| default_url.to_string()))?,
                key: get("api_key").map(ApiKey::new),
                max_in_flight,
            }],
        };
        let extra = own_keys
            .iter()
            .filter_map(|k| Some((k.to_string(), get(k)?)))
            .collect();
        Ok(Resolved {
            endpoints,
            pool,
            model: get("model"),
            extra,
        })
    }
}

fn read_pool_file(path: &Path) -> Result<PoolFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    let file: PoolFile = serde_json::from_str(&text).map_err(|e| {
        Error::InvalidArg(format!("{}: not a valid pool file: {e}", path.display()))
    })?;
    if file.endpoints.is_empty() {
        return Err(Error::InvalidArg(format!(
            "{}: a pool file needs at least one endpoint",
            path.display()
        )));
    }
    Ok(file)
}

fn seconds(key: &str, value: &str) -> Result<Duration> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(Error::InvalidArg(format!(
            "{key} `{value}` is not a number of seconds between 0 and 86400"
        ))),
    }
}

/// Base URLs are http(s) and carry no credentials (keys go in headers, never in URLs or logs).
fn check_url(url: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .ok_or_else(|| {
            Error::InvalidArg(format!(
                "base URL `{}` must start with http:// or https://",
                without_credentials(url)
            ))
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::InvalidArg(format!(
            "base URL `{scheme}://{}` needs a host and no user:password@ part",
            without_credentials(rest)
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// `url` with anything before an `@` in its authority shown as `<redacted>`: an error message must
/// not carry the password a caller put there.
fn without_credentials(url: &str) -> String {
    let (prefix, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    match prefix {
        "" => format!("{authority}{path}"),
        scheme => format!("{scheme}://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn options_win_over_the_environment() {
        let env = |name: &str| match name {
            "DG_OPENAI_API_KEY" => Some("sk-env".to_string()),
            "DG_OPENAI_BASE_URL" => Some("http://env.example/v1/".to_string()),
            "DG_OPENAI_TIMEOUT" => Some("7".to_string()),
            "DG_OPENAI_MAX_RETRIES" => Some("5".to_string()),
            "DG_OPENAI_QUALITY" => Some("low".to_string()),
            _ => None,
        };
        let resolved = GeneratorOptions::new()
            .resolve("openai", &["quality"], "https://api.openai.com/v1", &env)
            .unwrap();
        assert_eq!(resolved.endpoints[0].base_url, "http://env.example/v1");
        assert_eq!(resolved.endpoints[0].key, Some(ApiKey::new("sk-env")));
        assert_eq!(resolved.pool.timeout, Duration::from_secs(7));
        assert_eq!(resolved.pool.max_retries, 5);
        assert_eq!(resolved.extra("quality"), Some("low"));

        let mut options = GeneratorOptions::new();
        options
            .set("api_key", "sk-opt")
            .set("timeout_s", "2.5")
            .set("backoff_s", "0.01")
            .set("max_backoff_s", "0.04")
            .set("quality", "high");
        let resolved = options
            .resolve("openai", &["quality"], "https://api.openai.com/v1", &env)
            .unwrap();
        assert_eq!(resolved.endpoints[0].key, Some(ApiKey::new("sk-opt")));
        assert_eq!(resolved.pool.timeout, Duration::from_millis(2500));
        assert_eq!(resolved.pool.backoff_initial, Duration::from_millis(10));
        assert_eq!(resolved.pool.backoff_max, Duration::from_millis(40));
        assert_eq!(resolved.extra("quality"), Some("high"));
        assert!(!format!("{options:?}").contains("sk-opt"));
    }

    #[test]
    fn bad_options_are_named() {
        for (key, value, needle) in [
            ("qualty", "high", "unknown openai option `qualty`"),
            ("timeout_s", "-1", "timeout_s `-1`"),
            ("max_retries", "many", "max_retries `many`"),
            ("max_in_flight", "0", "max_in_flight `0`"),
            ("breaker_failures", "0", "breaker_failures `0`"),
            ("backoff_s", "soon", "backoff_s `soon`"),
            ("base_url", "ftp://x", "must start with http"),
            (
                "base_url",
                "https://user:pw@host/v1",
                "`https://<redacted>@host/v1` needs a host",
            ),
            (
                "base_url",
                "ftp://user:pw@host/v1",
                "`ftp://<redacted>@host/v1` must start",
            ),
            (
                "pool_file",
                "/nonexistent/pool.json",
                "/nonexistent/pool.json",
            ),
        ] {
            let mut options = GeneratorOptions::new();
            options.set(key, value);
            let err = options
                .resolve("openai", &["quality"], "https://api.openai.com/v1", &no_env)
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{key}: {err}");
            assert!(!err.to_string().contains("user:pw"), "{err}");
        }
    }

    #[test]
    fn pool_files_list_endpoints_with_keys_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        std::fs::write(
            &path,
            r#"{"endpoints": [
                {"base_url": "http://a.example/v1", "api_key_env": "KEY_A", "max_in_flight": 2},
                {"base_url": "http://b.example/v1", "api_key": "sk-b"}
            ], "timeout_s": 30, "max_retries": 4}"#,
        )
        .unwrap();
        let env = |name: &str| (name == "KEY_A").then(|| "sk-a".to_string());
        let mut options = GeneratorOptions::new();
        options.set("pool_file", path.to_str().unwrap());
        let resolved = options
            .resolve("openai", &[], "https://api.openai.com/v1", &env)
            .unwrap();
        assert_eq!(resolved.endpoints.len(), 2);
        assert_eq!(resolved.endpoints[0].key, Some(ApiKey::new("sk-a")));
        assert_eq!(resolved.endpoints[0].max_in_flight, 2);
        assert_eq!(resolved.endpoints[1].max_in_flight, 4);
        assert_eq!(resolved.pool.timeout, Duration::from_secs(30));
        assert_eq!(resolved.pool.max_retries, 4);

        let err = options
            .resolve("openai", &[], "https://api.openai.com/v1", &no_env)
            .unwrap_err();
        assert!(err.to_string().contains("KEY_A is not set"), "{err}");
        std::fs::write(&path, r#"{"endpoints": [], "extra": 1}"#).unwrap();
        let err = options
            .resolve("openai", &[], "https://api.openai.com/v1", &no_env)
            .unwrap_err();
        assert!(err.to_string().contains("not a valid pool file"), "{err}");
    }
}
