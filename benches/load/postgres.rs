//! Records on Postgres against sled in the same run: a cached record GET, a cached master
//! playlist GET and search over [`RECORDS`] records, one server per backend on the same seeded
//! data (the Postgres one filled by `copy_sled_to_postgres`, what `streamgate migrate` runs).

use std::path::Path;

use streamgate_actors::store::{copy_sled_to_postgres, test_postgres};

use super::{
    copy_data, paired_rounds, paths_script, plain, read_response, scripted, search_paths, seed,
    Row, Server, CONNECTIONS,
};

/// The status and body of a GET on a fresh connection.
fn get(server: &Server, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
    read_response(&mut stream).unwrap()
}

pub fn rows(scratch: &Path, config_file: &Path, rounds: usize, seconds: u32, rows: &mut Vec<Row>) {
    let records =
        usize::try_from(super::env_number("LOAD_BENCH_POSTGRES_RECORDS", 100_000)).unwrap();
    let sled_dir = scratch.join("sled");
    let data = seed(&sled_dir, records);
    let postgres_dir = scratch.join("postgres");
    copy_data(&sled_dir, &postgres_dir);
    let url = test_postgres::fresh_database().unwrap();
    copy_sled_to_postgres(&sled_dir, &url, &mut |_, _| {}).unwrap();
    let sled = Server::start(config_file, &sled_dir, &[]);
    let database = format!("postgres.url={}", toml::Value::String(url.clone()));
    let postgres = Server::start(
        config_file,
        &postgres_dir,
        &["storage.records=\"postgres\"", &database],
    );

    let clip = &data.clip;
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "record GET (cached)",
            vec![format!("/api/v1/media/{clip}")],
            "≥ 0.9",
        ),
        (
            "playlist GET (master, cached)",
            vec![format!("/api/v1/media/{clip}/hls/master.m3u8")],
            "≥ 0.9",
        ),
        ("search", search_paths(), "p99 < 20 ms"),
    ];
    for (name, paths, target) in cases {
        for path in &paths {
            // Both backends answer the same: the comparison is of equal work.
            let answer = get(&postgres, path);
            assert_eq!(answer.0, 200, "{path}: {}", answer.1);
            assert_eq!(answer, get(&sled, path), "{path}");
        }
        let script = scratch.join("postgres.lua");
        paths_script(&script, &plain(&[], &paths));
        postgres.reset_peak();
        let (ours, baseline, paired) = paired_rounds(
            (&postgres.base, scripted(&script)),
            (&sled.base, scripted(&script)),
            CONNECTIONS,
            rounds,
            seconds,
        )
        .summary();
        rows.push(
            Row::from_load(
                &format!("{name} on Postgres, {records} records, 64 conn"),
                &ours,
                postgres.peak_rss_mb(),
            )
            .versus("sled", &baseline, target)
            .paired(paired),
        );
    }
}
