//! Output of intervals: JSON lines and one readable text line per interval.

pub mod output;
pub mod prometheus;
pub mod serve;
pub mod status;
pub mod text;
pub mod top;

use std::io::Write;

use anyhow::Result;

use crate::model::Interval;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Text,
    Json,
    /// Nothing on stdout (as a service: metrics, status socket and logs only).
    None,
}

pub fn write_interval(
    out: &mut impl Write,
    format: OutputFormat,
    interval: &Interval,
) -> Result<()> {
    match format {
        OutputFormat::None => return Ok(()),
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, interval)?;
            out.write_all(b"\n")?;
        }
        OutputFormat::Text => {
            out.write_all(text::line(interval).as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
