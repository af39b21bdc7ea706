use crate::cli::BenchCommand; use crate::config::Config; use crate::Exit;
pub async fn run(_c: BenchCommand, _config: &Config) -> Result<(), Exit> { Ok(()) }
