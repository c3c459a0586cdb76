//! Loading the daemon's configuration file through the public API.

use std::io::Write;
use std::path::Path;

use engine::config::{ConfigError, EngineConfig, TcpServerConfig, default_config_toml};

fn write_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn the_default_file_loads_from_disk() {
    let file = write_file(default_config_toml());
    let config = EngineConfig::from_file(file.path()).unwrap();
    assert_eq!(config, EngineConfig::default());
    assert_eq!(config.tcp_server, [TcpServerConfig::default()]);
}

#[test]
fn errors_name_the_file_line_column_and_key() {
    let file =
        write_file("[[tcp_server]]\nname = \"lidar\"\n\n[[tcp_server]]\nname = \"camera\"\ngroup_size = 0\n");
    let error = EngineConfig::from_file(file.path()).unwrap_err();
    let expected =
        format!("{}:6:14: tcp_server[1].group_size: must be in 1..=65536, got 0", file.path().display());
    assert_eq!(error.to_string(), expected);
    match error {
        ConfigError::Invalid { path, key, line, column, .. } => {
            assert_eq!(path.as_deref(), Some(file.path()));
            assert_eq!((key.as_str(), line, column), ("tcp_server[1].group_size", Some(6), Some(14)));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn unknown_keys_are_listed_with_the_valid_ones() {
    let file = write_file("[[tcp_client]]\naddress = \"gnss.local:5017\"\nmax_connections = 4\n");
    let text = EngineConfig::from_file(file.path()).unwrap_err().to_string();
    let prefix = format!(
        "{}:3:1: tcp_client[0].max_connections: unknown field `max_connections`",
        file.path().display()
    );
    assert!(text.starts_with(&prefix), "{text}");
    assert!(text.contains("`reconnect_backoff_max_ms`"), "{text}");
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let file = write_file("[bus]\nmode = \"0640\n");
    let error = EngineConfig::from_file(file.path()).unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { line: Some(2), .. }), "{error:?}");
    assert!(error.to_string().starts_with(&format!("{}:2:", file.path().display())), "{error}");
}

#[test]
fn a_missing_file_is_an_io_error() {
    let path = Path::new("/nonexistent/ringest.toml");
    let error = EngineConfig::from_file(path).unwrap_err();
    assert!(matches!(&error, ConfigError::Io { path: p, .. } if p == path), "{error:?}");
    assert!(error.to_string().starts_with("cannot read /nonexistent/ringest.toml: "), "{error}");
}
