//! The process's log subscriber (stderr, human or JSON) with its level and format behind
//! reload layers, so that a configuration reload changes both without a restart.

use std::sync::OnceLock;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type FormatLayer = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<FormatLayer, Filtered>,
}

/// Set once, by the first [`init`] that installs the subscriber.
static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The level `level` names; "" = `RUST_LOG`, else `info` (with tokio-postgres' chatter off).
fn filter(level: &str) -> EnvFilter {
    if !level.is_empty() {
        if let Ok(f) = EnvFilter::try_new(level) {
            return f;
        }
    }
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"))
}

fn format_layer(format: LogFormat) -> FormatLayer {
    // Colour codes only for a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// Logs go to stderr at `level` (see [`filter`]) in `format`. Does nothing if a subscriber
/// is already installed (tests, a second call).
pub fn init(format: LogFormat, level: &str) {
    let (filter, filter_handle) = reload::Layer::new(filter(level));
    let (format, format_handle) = reload::Layer::new(format_layer(format));
    if Registry::default().with(filter).with(format).try_init().is_ok() {
        let _ = HANDLES.set(Handles { filter: filter_handle, format: format_handle });
    }
}

/// Puts `format` and `level` in force. An error says why (no subscriber of ours installed).
pub fn apply(format: LogFormat, level: &str) -> Result<(), String> {
    let h = HANDLES.get().ok_or("the log subscriber was not installed by pgtenant")?;
    h.filter.reload(filter(level)).map_err(|e| e.to_string())?;
    h.format.reload(format_layer(format)).map_err(|e| e.to_string())?;
    Ok(())
}
