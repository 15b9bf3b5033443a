//! Load generators behind `keel bench`. Each compares Keel with a baseline in the same run.

pub mod limit;
pub mod report;

pub use report::{print_report, Scenario};
