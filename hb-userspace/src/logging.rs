//! Diagnostics on stderr: text for people or JSON lines for log shippers,
//! up to a level that a reload can change (`log::set_max_level`).
//!
//! The level: `--log-level` (or the config file's `log_level`) when given;
//! else `RUST_LOG`, with its per-module directives; else info.

use std::{
    io::Write as _,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use log::{LevelFilter, Log, Metadata, Record};

/// Levels of `--log-level`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> LevelFilter {
        match self {
            Self::Error => LevelFilter::Error,
            Self::Warn => LevelFilter::Warn,
            Self::Info => LevelFilter::Info,
            Self::Debug => LevelFilter::Debug,
            Self::Trace => LevelFilter::Trace,
        }
    }
}

/// Formats of `--log-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `[2026-11-30T12:00:00Z INFO ] message`
    #[default]
    Text,
    /// `{"ts":"...","level":"INFO","target":"...","message":"..."}`, one a line.
    Json,
}

struct Logger {
    json: AtomicBool,
    /// Set while no level was given: `RUST_LOG`'s directives decide.
    env: Option<env_filter::Filter>,
    /// Whether a level was given (it then overrides `RUST_LOG`).
    explicit: AtomicBool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger; later calls only change the settings (as `set`).
pub fn init(level: Option<LogLevel>, format: LogFormat) {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| env_filter::Builder::new().parse(&v).build());
    let logger = LOGGER.get_or_init(|| Logger {
        json: AtomicBool::new(false),
        env,
        explicit: AtomicBool::new(false),
    });
    // Fails only when already installed: then the settings below apply.
    let _ = log::set_logger(logger);
    set(level, format);
}

/// Changes the level and format of the installed logger (at a reload).
pub fn set(level: Option<LogLevel>, format: LogFormat) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    logger
        .json
        .store(format == LogFormat::Json, Ordering::Relaxed);
    logger.explicit.store(level.is_some(), Ordering::Relaxed);
    let max = match (level, &logger.env) {
        (Some(l), _) => l.filter(),
        (None, Some(env)) => env.filter(),
        (None, None) => LevelFilter::Info,
    };
    log::set_max_level(max);
}

impl Log for Logger {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        if meta.level() > log::max_level() {
            return false;
        }
        match &self.env {
            Some(env) if !self.explicit.load(Ordering::Relaxed) => env.enabled(meta),
            _ => true,
        }
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.json.load(Ordering::Relaxed) {
            let mut line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            })
            .to_string();
            line.push('\n');
            line
        } else {
            format!(
                "[{} {:<5}] {}\n",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                record.level(),
                record.args()
            )
        };
        // One write per line, so that lines from threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}
