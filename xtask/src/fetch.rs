//! Downloads with checksums, retries and atomic renames.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use md5::Md5;
use sha2::{Digest, Sha256};

pub use datasets::DEFAULT_BASE_URL;

/// The expected digest of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Lowercase hex MD5.
    Md5(String),
    /// Lowercase hex SHA-256.
    Sha256(String),
}

impl Checksum {
    fn hasher(&self) -> Hasher {
        match self {
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
        }
    }

    fn expected(&self) -> &str {
        match self {
            Checksum::Md5(h) | Checksum::Sha256(h) => h,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) => "sha256",
        }
    }
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    fn hex(self) -> String {
        let digest: Vec<u8> = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        };
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One file to fetch.
#[derive(Clone, Debug)]
pub struct FileSpec {
    /// Dataset it belongs to (`ptb`, `tinyshakespeare`).
    pub dataset: &'static str,
    /// Path under the base URL, and under the data folder.
    pub path: String,
    /// Its expected digest.
    pub checksum: Checksum,
}

/// Every file `fetch-data` knows: the datasets crate's list, with the checksums of the
/// reference's data.
pub fn catalogue() -> Vec<FileSpec> {
    datasets::FILES
        .iter()
        .map(|f| FileSpec {
            dataset: f.dataset.name(),
            path: f.path.into(),
            checksum: match f.checksum {
                datasets::Checksum::Md5(h) => Checksum::Md5(h.into()),
                datasets::Checksum::Sha256(h) => Checksum::Sha256(h.into()),
            },
        })
        .collect()
}

/// How downloads behave.
#[derive(Clone, Debug)]
pub struct Options {
    /// Attempts per file for transient failures.
    pub attempts: u32,
    /// Longest wait for any read or connect.
    pub timeout: Duration,
    /// Wait before the second attempt; doubled after each further failure.
    pub first_backoff: Duration,
    /// Draw a progress bar (only shown when stderr is a terminal).
    pub progress: bool,
}

/// Fetches every file in `files`; one that fails does not stop the others, and the error lists
/// every failure.
pub fn fetch_all(
    files: &[FileSpec],
    base_url: &str,
    data_dir: &Path,
    options: &Options,
) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(options.timeout)
        .timeout(options.timeout)
        .build()
        .context("cannot create the HTTP client")?;
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| fetch_one(&client, file, base_url, data_dir, options).err())
        .map(|e| format!("{e:#}"))
        .collect();
    match failures.len() {
        0 => Ok(()),
        1 => bail!("{}", failures[0]),
        n => bail!("{n} files failed:\n  {}", failures.join("\n  ")),
    }
}

/// The digest of the file at `path`, if it can be read.
fn digest_of(path: &Path, checksum: &Checksum) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let mut hasher = checksum.hasher();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(hasher.hex());
        }
        hasher.update(&buf[..n]);
    }
}

/// A failed attempt: whether trying again may help.
struct Failure {
    transient: bool,
    error: anyhow::Error,
}

fn fetch_one(
    client: &reqwest::blocking::Client,
    file: &FileSpec,
    base_url: &str,
    data_dir: &Path,
    options: &Options,
) -> anyhow::Result<()> {
    let target = data_dir.join(&file.path);
    let url = format!("{}/{}", base_url.trim_end_matches('/'), file.path);
    match digest_of(&target, &file.checksum) {
        Some(d) if d == file.checksum.expected() => {
            println!("{}: present, checksum ok", target.display());
            return Ok(());
        }
        Some(_) => println!(
            "{}: present but its checksum is wrong; downloading it again",
            target.display()
        ),
        None => {}
    }
    let dir = target.parent().expect("catalogue paths have a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut backoff = options.first_backoff;
    let mut attempt = 1;
    loop {
        let tmp = dir.join(format!(
            ".{}.part-{}",
            target.file_name().expect("file name").to_string_lossy(),
            std::process::id()
        ));
        let result = download(client, &url, &tmp, &target, file, options);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        match result {
            Ok(()) => {
                println!("{}: downloaded, checksum ok", target.display());
                return Ok(());
            }
            Err(f) if f.transient && attempt < options.attempts => {
                eprintln!(
                    "{}: attempt {attempt}/{} failed ({:#}); retrying in {:.1} s",
                    file.path,
                    options.attempts,
                    f.error,
                    backoff.as_secs_f64()
                );
                std::thread::sleep(backoff);
                backoff *= 2;
                attempt += 1;
            }
            Err(f) => {
                return Err(f.error.context(format!(
                    "cannot fetch {} from {url} (after {attempt} attempt{}); no file was written",
                    target.display(),
                    if attempt == 1 { "" } else { "s" }
                )))
            }
        }
    }
}

fn download(
    client: &reqwest::blocking::Client,
    url: &str,
    tmp: &Path,
    target: &Path,
    file: &FileSpec,
    options: &Options,
) -> Result<(), Failure> {
    let transient = |error: anyhow::Error| Failure {
        transient: true,
        error,
    };
    let permanent = |error: anyhow::Error| Failure {
        transient: false,
        error,
    };
    let mut response = client
        .get(url)
        .send()
        .map_err(|e| transient(anyhow!(e).context("request failed")))?;
    let status = response.status();
    if !status.is_success() {
        let e = anyhow!("the server answered HTTP {status}");
        return Err(
            if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                transient(e)
            } else {
                permanent(e)
            },
        );
    }
    let expected_len = response.content_length();
    let bar = if options.progress {
        let bar = ProgressBar::new(expected_len.unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template("{msg} {bytes}/{total_bytes} {wide_bar} {eta}")
                .expect("static template"),
        );
        bar.set_message(file.path.clone());
        bar
    } else {
        ProgressBar::hidden()
    };
    let write = |e: std::io::Error| {
        permanent(anyhow!(e).context(format!("cannot write {}", tmp.display())))
    };
    let mut out = File::create(tmp).map_err(write)?;
    let mut hasher = file.checksum.hasher();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = response.read(&mut buf).map_err(|e| {
            transient(anyhow!(e).context(format!("connection lost after {received} bytes")))
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(write)?;
        hasher.update(&buf[..n]);
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if let Some(len) = expected_len.filter(|&len| len != received) {
        return Err(transient(anyhow!(
            "the body was cut short: {received} of {len} bytes"
        )));
    }
    let got = hasher.hex();
    if got != file.checksum.expected() {
        return Err(permanent(anyhow!(
            "checksum mismatch: expected {} {}, got {got} ({received} bytes); the mirror serves \
             a different file: try another --base-url",
            file.checksum.name(),
            file.checksum.expected()
        )));
    }
    out.sync_all().map_err(write)?;
    drop(out);
    std::fs::rename(tmp, target).map_err(|e| {
        permanent(anyhow!(e).context(format!("cannot move the download to {}", target.display())))
    })?;
    if let Ok(d) = File::open(target.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Files in `dir` and below (for tests: proves nothing partial is left).
#[cfg(test)]
fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    //! Fetches from a loopback HTTP server started by each test.

    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const BODY: &[u8] = b"the cat sat on the mat\nthe dog sat too\n";

    /// What the server does with each request, in order; the last one repeats.
    #[derive(Clone, Copy)]
    enum Reply {
        Ok,
        NotFound,
        ServerError,
        /// Announces the full length, sends half, closes.
        Truncated,
        /// Announces the full length, sends half, then resets the connection (TCP RST).
        Reset,
        /// Announces the full length, sends half, then says nothing for two seconds.
        Stall,
    }

    /// Serves `replies` on a loopback port; returns the base URL and the request counter.
    fn serve(replies: Vec<Reply>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(20) {
                let Ok(stream) = stream else { return };
                let reply = replies[seen.fetch_add(1, Ordering::SeqCst).min(replies.len() - 1)];
                // One thread per connection, so a stalled reply does not hold up a retry.
                std::thread::spawn(move || answer(stream, reply));
            }
        });
        (format!("http://{addr}"), count)
    }

    /// Reads one request from `stream` and answers it with `reply`.
    fn answer(mut stream: std::net::TcpStream, reply: Reply) {
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok() && line != "\r\n" && !line.is_empty() {
            line.clear();
        }
        let head = |status: &str, len: usize| {
            format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        };
        let half = |stream: &mut std::net::TcpStream| {
            let _ = stream
                .write_all(head("200 OK", BODY.len()).as_bytes())
                .and_then(|_| stream.write_all(&BODY[..BODY.len() / 2]))
                .and_then(|_| stream.flush());
        };
        match reply {
            Reply::Ok => {
                let _ = stream
                    .write_all(head("200 OK", BODY.len()).as_bytes())
                    .and_then(|_| stream.write_all(BODY));
            }
            Reply::NotFound => {
                let _ = stream.write_all(head("404 Not Found", 0).as_bytes());
            }
            Reply::ServerError => {
                let _ = stream.write_all(head("500 Internal Server Error", 0).as_bytes());
            }
            Reply::Truncated => half(&mut stream),
            Reply::Reset => {
                half(&mut stream);
                std::thread::sleep(Duration::from_millis(50));
                // Closing with a zero linger time sends RST instead of FIN.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
            Reply::Stall => {
                half(&mut stream);
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let _ = stream.flush();
    }

    fn spec(checksum: Checksum) -> FileSpec {
        FileSpec {
            dataset: "test",
            path: "set/file.txt".into(),
            checksum,
        }
    }

    fn good() -> Checksum {
        let mut h = Md5::new();
        h.update(BODY);
        Checksum::Md5(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn options() -> Options {
        Options {
            attempts: 3,
            timeout: Duration::from_secs(5),
            first_backoff: Duration::from_millis(10),
            progress: false,
        }
    }

    fn run(replies: Vec<Reply>, checksum: Checksum, dir: &Path) -> (anyhow::Result<()>, usize) {
        let (url, count) = serve(replies);
        let result = fetch_all(&[spec(checksum)], &url, dir, &options());
        (result, count.load(Ordering::SeqCst))
    }

    #[test]
    fn success_writes_the_verified_file_and_a_second_run_skips_it() {
        let dir = tempfile::tempdir().unwrap();
        let (result, requests) = run(vec![Reply::Ok], good(), dir.path());
        result.unwrap();
        assert_eq!(requests, 1);
        assert_eq!(
            std::fs::read(dir.path().join("set/file.txt")).unwrap(),
            BODY
        );
        assert_eq!(all_files(dir.path()).len(), 1, "no temporary file left");
        let (result, requests) = run(vec![Reply::NotFound], good(), dir.path());
        result.unwrap();
        assert_eq!(requests, 0, "a valid file is not downloaded again");
    }

    #[test]
    fn wrong_checksum_fails_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (result, requests) = run(vec![Reply::Ok], Checksum::Md5("00".repeat(16)), dir.path());
        let msg = format!("{:#}", result.unwrap_err());
        assert!(
            msg.contains("checksum mismatch") && msg.contains("set/file.txt"),
            "{msg}"
        );
        assert_eq!(
            requests, 1,
            "a complete body with the wrong digest is not retried"
        );
        assert!(
            all_files(dir.path()).is_empty(),
            "{:?}",
            all_files(dir.path())
        );
    }

    #[test]
    fn not_found_fails_at_once_naming_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let (result, requests) = run(vec![Reply::NotFound], good(), dir.path());
        let msg = format!("{:#}", result.unwrap_err());
        assert!(
            msg.contains("404") && msg.contains("http://127.0.0.1:"),
            "{msg}"
        );
        assert_eq!(requests, 1, "404 is not retried");
        assert!(all_files(dir.path()).is_empty());
    }

    #[test]
    fn a_body_cut_short_or_reset_is_retried_and_never_kept() {
        for cut in [Reply::Truncated, Reply::Reset] {
            let dir = tempfile::tempdir().unwrap();
            let (result, requests) = run(vec![cut], good(), dir.path());
            let msg = format!("{:#}", result.unwrap_err());
            assert!(msg.contains("after 3 attempts"), "{msg}");
            assert_eq!(requests, 3);
            assert!(
                all_files(dir.path()).is_empty(),
                "{:?}",
                all_files(dir.path())
            );

            let (result, requests) =
                run(vec![cut, Reply::ServerError, Reply::Ok], good(), dir.path());
            result.unwrap();
            assert_eq!(
                requests, 3,
                "transient failures (cut body, HTTP 500) are retried until one succeeds"
            );
            assert_eq!(
                std::fs::read(dir.path().join("set/file.txt")).unwrap(),
                BODY
            );
        }
    }

    #[test]
    fn a_stalled_server_times_out_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (url, count) = serve(vec![Reply::Stall, Reply::Ok]);
        let quick = Options {
            timeout: Duration::from_millis(400),
            ..options()
        };
        let start = std::time::Instant::now();
        fetch_all(&[spec(good())], &url, dir.path(), &quick).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(1900),
            "did not wait out the stall"
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(
            std::fs::read(dir.path().join("set/file.txt")).unwrap(),
            BODY
        );

        // Stalled every time: a clear error naming the timeout, and no file.
        let dir = tempfile::tempdir().unwrap();
        let (url, _) = serve(vec![Reply::Stall]);
        let err = fetch_all(&[spec(good())], &url, dir.path(), &quick).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("after 3 attempts") && msg.contains("set/file.txt"),
            "{msg}"
        );
        assert!(
            msg.contains("timed out") || msg.contains("timeout"),
            "{msg}"
        );
        assert!(all_files(dir.path()).is_empty());
    }

    #[test]
    fn one_failing_file_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _) = serve(vec![Reply::NotFound, Reply::Ok]);
        let mut second = spec(good());
        second.path = "set/other.txt".into();
        let err = fetch_all(&[spec(good()), second], &url, dir.path(), &options()).unwrap_err();
        assert!(format!("{err:#}").contains("set/file.txt"), "{err:#}");
        assert_eq!(
            all_files(dir.path()),
            vec![dir.path().join("set/other.txt")]
        );
    }

    #[test]
    fn a_corrupt_existing_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("set")).unwrap();
        std::fs::write(dir.path().join("set/file.txt"), b"garbage").unwrap();
        let (result, _) = run(vec![Reply::Ok], good(), dir.path());
        result.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("set/file.txt")).unwrap(),
            BODY
        );
    }

    #[test]
    fn the_embedded_tiny_shakespeare_is_the_catalogued_file() {
        // The trainer embeds assets/tinyshakespeare.txt; it must be the file fetch-data checks.
        let embedded = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tinyshakespeare.txt");
        let spec = catalogue()
            .into_iter()
            .find(|f| f.dataset == "tinyshakespeare")
            .expect("catalogued");
        assert_eq!(
            digest_of(&embedded, &spec.checksum).as_deref(),
            Some(spec.checksum.expected())
        );
    }
}
