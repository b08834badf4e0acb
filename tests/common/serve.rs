//! A `dg serve` child for the server tests, and whole HTTP answers from it.
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A `dg serve` child on 127.0.0.1 and the port it printed; killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    /// Held open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `dg serve --port 0 <args>` from the repository root with `env` set, and waits for
    /// its `listening on` line. Logs (warnings and up) go to the test's stderr.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dg"));
        cmd.arg("serve")
            .args(["--port", "0"])
            .current_dir(super::repo())
            .args(args)
            .env("DG_LOG", "warn")
            .env_remove("DG_SERVE_API_KEY")
            .env_remove("DG_SERVE_NUM_INFERENCE_STEPS")
            .env_remove("DG_SERVE_GUIDANCE_SCALE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(lib) = super::ort_library() {
            cmd.env("DG_ORT_DYLIB_PATH", lib);
        }
        let mut child = cmd.spawn().expect("dg serve starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|port| port.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dg serve {args:?} did not print its address (see its log above): {line:?}");
        };
        Server {
            child,
            port,
            _stdout: stdout,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid; it has not been waited for, so the pid is ours.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
        self.child.wait().expect("dg serve is waited for")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a JSON body ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Reads an answer whole; a body cut short (or any transport failure) is an error.
pub fn read(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, String> {
    let mut response = result.map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| format!("a {status} answer's body could not be read whole: {e}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub fn get(url: &str) -> Reply {
    read(agent().get(url).call()).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn post(url: &str, content_type: &str, body: &[u8]) -> Reply {
    read(
        agent()
            .post(url)
            .header("content-type", content_type)
            .send(body),
    )
    .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn post_json(url: &str, body: &Value) -> Reply {
    post(url, "application/json", body.to_string().as_bytes())
}

/// A multipart/form-data body of `(name, bytes)` parts (a file part, `NAME.png`, when the name is
/// `image`, `image[]` or `mask`), and its content type.
pub fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "dg-serve-test-boundary-3c9a";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = if matches!(*name, "image" | "image[]" | "mask") {
            format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\n\
                 Content-Type: image/png\r\n\r\n"
            )
        } else {
            format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn post_multipart(url: &str, parts: &[(&str, &[u8])]) -> Reply {
    let (content_type, body) = multipart(parts);
    post(url, &content_type, &body)
}
