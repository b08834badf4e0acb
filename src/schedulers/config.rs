//! Typed reads of a diffusers `scheduler_config.json`, with per-class defaults.
use serde_json::{Map, Value};

use super::SchedulerError;

/// A read-only view of a scheduler config for one scheduler class.
///
/// A key that is missing or `null` takes the caller's default, which is that class's
/// diffusers default. Keys nobody asks for are ignored, as diffusers does.
pub(crate) struct Config<'a> {
    map: Option<&'a Map<String, Value>>,
    pub(crate) class: &'static str,
}

impl<'a> Config<'a> {
    pub(crate) fn new(value: &'a Value, class: &'static str) -> Result<Self, SchedulerError> {
        match value {
            Value::Object(map) => Ok(Self {
                map: Some(map),
                class,
            }),
            Value::Null => Ok(Self { map: None, class }),
            other => Err(SchedulerError::InvalidConfig {
                scheduler: class,
                key: "<root>".into(),
                value: other.to_string(),
                expected: "a JSON object",
            }),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn invalid(&self, key: &str, value: &Value, expected: &'static str) -> SchedulerError {
        SchedulerError::InvalidConfig {
            scheduler: self.class,
            key: key.into(),
            value: value.to_string(),
            expected,
        }
    }

    /// An error for a value of the right type that this implementation does not support.
    pub(crate) fn unsupported(
        &self,
        key: &str,
        value: impl std::fmt::Display,
        supported: &str,
    ) -> SchedulerError {
        SchedulerError::UnsupportedConfig {
            scheduler: self.class,
            key: key.into(),
            value: value.to_string(),
            supported: supported.into(),
        }
    }

    /// The value at `key` through `convert`, or an error saying what was `expected`.
    fn typed<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
        expected: &'static str,
    ) -> Result<Option<T>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| self.invalid(key, v, expected)),
        }
    }

    pub(crate) fn f64_opt(&self, key: &str) -> Result<Option<f64>, SchedulerError> {
        self.typed(key, Value::as_f64, "a number")
    }

    pub(crate) fn f64(&self, key: &str, default: f64) -> Result<f64, SchedulerError> {
        Ok(self.f64_opt(key)?.unwrap_or(default))
    }

    pub(crate) fn i64(&self, key: &str, default: i64) -> Result<i64, SchedulerError> {
        let int = |v: &Value| match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Some(i),
            // Integral floats (e.g. 1000.0) behave like Python ints in arithmetic here.
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            _ => None,
        };
        Ok(self.typed(key, int, "an integer")?.unwrap_or(default))
    }

    pub(crate) fn usize(&self, key: &str, default: usize) -> Result<usize, SchedulerError> {
        let v = self.i64(key, default as i64)?;
        usize::try_from(v).map_err(|_| self.invalid(key, &Value::from(v), "a non-negative integer"))
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool, SchedulerError> {
        Ok(self
            .typed(key, Value::as_bool, "true or false")?
            .unwrap_or(default))
    }

    pub(crate) fn str(&self, key: &str, default: &'static str) -> Result<&'a str, SchedulerError> {
        Ok(self.str_opt(key)?.unwrap_or(default))
    }

    pub(crate) fn str_opt(&self, key: &str) -> Result<Option<&'a str>, SchedulerError> {
        self.typed(key, Value::as_str, "a string")
    }

    /// A string that must be one of `allowed`; anything else is an unsupported value.
    pub(crate) fn choice(
        &self,
        key: &str,
        default: &'static str,
        allowed: &[&'static str],
    ) -> Result<&'a str, SchedulerError> {
        let v = self.str(key, default)?;
        if allowed.contains(&v) {
            Ok(v)
        } else {
            Err(self.unsupported(key, format!("{v:?}"), &allowed.join(", ")))
        }
    }

    pub(crate) fn f64_list(&self, key: &str) -> Result<Option<Vec<f64>>, SchedulerError> {
        let list = |v: &Value| v.as_array()?.iter().map(Value::as_f64).collect();
        self.typed(key, list, "an array of numbers")
    }

    /// Rejects `key = true` for features this crate does not implement.
    pub(crate) fn require_false(&self, key: &str) -> Result<(), SchedulerError> {
        if self.bool(key, false)? {
            Err(self.unsupported(key, true, "false"))
        } else {
            Ok(())
        }
    }
}
