//! Writing to stdout and stderr without panicking.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`dg doctor | head -1`) or a full
//! device (`> /dev/full`). Commands write their stdout lines through [`Out`] instead: it keeps the
//! first write error, drops later lines and lets the command finish its work, and `main` then turns
//! the error into an exit status ([`exit_code`]): a broken pipe exits 0 without a word, as the
//! reader chose to stop reading and the files are written; any other failure is reported and exits
//! 1, as the caller lost output it asked for.
//!
//! We keep Rust's ignored SIGPIPE rather than restoring the default action: the signal would kill dg
//! between two images of one request, it cannot tell a closed stdout from a closed stderr, and a
//! server (a later `dg serve`) must survive clients that hang up.
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

/// `outln!(out, "wrote {}", path.display())`: one line on stdout through [`Out::line`].
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}

/// `errln!("warning: {reason}")`: one line on stderr, through [`err_line`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::err_line(format_args!($($arg)*))
    };
}

/// The stdout of a command: lines until the first write error, which [`Out::finish`] returns.
pub struct Out {
    sink: Box<dyn Write>,
    error: Option<io::Error>,
}

impl Out {
    pub fn stdout() -> Out {
        Out::new(Box::new(io::stdout()))
    }

    pub fn new(sink: Box<dyn Write>) -> Out {
        Out { sink, error: None }
    }

    /// Writes `args` and a newline; after a failed write nothing more is written.
    pub fn line(&mut self, args: fmt::Arguments<'_>) {
        if self.error.is_some() {
            return;
        }
        let result = self
            .sink
            .write_fmt(args)
            .and_then(|()| self.sink.write_all(b"\n"));
        if let Err(err) = result {
            self.error = Some(err);
        }
    }

    /// Writes `text` as it is (no newline) and flushes it, so a reader sees text streamed as it
    /// is made; after a failed write nothing more is written.
    pub fn text(&mut self, text: &str) {
        if self.error.is_some() {
            return;
        }
        let result = self
            .sink
            .write_all(text.as_bytes())
            .and_then(|()| self.sink.flush());
        if let Err(err) = result {
            self.error = Some(err);
        }
    }

    /// Whether a write has failed (the reader went away): a command streaming text can stop.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Flushes what is buffered; the first error of any write.
    pub fn finish(mut self) -> io::Result<()> {
        match self.error.take() {
            Some(err) => Err(err),
            None => self.sink.flush(),
        }
    }
}

/// One line on stderr. A failure is dropped: with stderr gone there is nowhere left to report it.
pub fn err_line(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// The exit status of a command that returned `result` and wrote its stdout with `written`.
pub fn exit_code(result: diffgentor::Result<()>, written: io::Result<()>) -> ExitCode {
    match (result, written) {
        (Err(err), _) => {
            errln!("error: {err}");
            ExitCode::FAILURE
        }
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Ok(()), Err(err)) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        (Ok(()), Err(err)) => {
            errln!("error: writing to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Fails, with `kind`, every write that contains `poison`; a real pipe would fail every
    /// later write too, but this one would not, so [`Out`] must stop by itself.
    struct Failing {
        poison: &'static [u8],
        kind: io::ErrorKind,
        written: Rc<RefCell<Vec<u8>>>,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.windows(self.poison.len()).any(|w| w == self.poison) {
                return Err(io::Error::from(self.kind));
            }
            self.written.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn out(poison: &'static [u8], kind: io::ErrorKind) -> (Out, Rc<RefCell<Vec<u8>>>) {
        let written = Rc::new(RefCell::new(Vec::new()));
        let sink = Failing {
            poison,
            kind,
            written: written.clone(),
        };
        (Out::new(Box::new(sink)), written)
    }

    #[test]
    fn lines_are_written_until_the_first_error_which_finish_returns() {
        let (mut out, written) = out(b"b.png", io::ErrorKind::BrokenPipe);
        outln!(out, "wrote {}", "a.png");
        outln!(out, "wrote {}", "b.png");
        outln!(out, "wrote {}", "c.png");
        let written = String::from_utf8_lossy(&written.borrow()).into_owned();
        assert!(written.starts_with("wrote a.png\n"), "{written:?}");
        assert!(!written.contains("c.png"), "{written:?}");
        let err = out.finish().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_clean_run_finishes_ok() {
        let (mut out, written) = out(b"never", io::ErrorKind::Other);
        outln!(out, "seed {}", 7);
        assert!(out.finish().is_ok());
        assert_eq!(written.borrow().as_slice(), b"seed 7\n");
    }

    #[test]
    fn only_a_broken_pipe_is_a_clean_exit() {
        let broken = Err(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(exit_code(Ok(()), broken), ExitCode::SUCCESS);
        let full = Err(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(exit_code(Ok(()), full), ExitCode::FAILURE);
        let failed = Err(diffgentor::Error::InvalidArg("x".into()));
        assert_eq!(exit_code(failed, Ok(())), ExitCode::FAILURE);
    }
}
