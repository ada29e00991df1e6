//! The binary refuses bad configuration with a message naming the key.

use std::process::Command;

#[test]
fn an_unknown_key_or_bad_value_stops_start_up_naming_it() {
    let binary = env!("CARGO_BIN_EXE_streamgate");
    let output = Command::new(binary)
        .env("STREAMGATE__SERVER__BINDD", "0.0.0.0:1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.bindd"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[upload]\nmax_size_bytes = \"big\"\n").unwrap();
    let output = Command::new(binary)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("upload.max_size_bytes") && stderr.contains("integer"),
        "{stderr}"
    );

    let output = Command::new(binary)
        .args(["--set", "transcode.workers=0", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("transcode.workers"));

    let output = Command::new(binary).arg("--check-config").output().unwrap();
    assert!(output.status.success(), "the defaults are valid");
}
