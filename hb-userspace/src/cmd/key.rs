//! The fleet key file shared by `hb run` and `hb beat`: 32 hex digits
//! (16 bytes, optionally followed by a newline) or 16 raw bytes. Refused
//! when anyone but its owner may read or write it, or when it belongs to
//! another user than the one running hb: whoever holds the key can make
//! any host look alive.

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Result, bail};
use hb_common::auth::KEY_LEN;

/// How to make a good key file, for error messages.
fn fix(path: &Path) -> String {
    format!(
        "create one with `(umask 077; head -c 16 /dev/urandom > {})` and copy it to every host",
        path.display()
    )
}

/// Reads and checks the key file at `path`. Every error is one line that
/// names the file, the problem and the fix.
pub fn read(path: &Path) -> Result<[u8; KEY_LEN]> {
    let shown = path.display();
    // Every check is on the opened file (fstat on its descriptor): a file
    // swapped in between a check by name and the read cannot slip through.
    // O_NONBLOCK: a FIFO put in its place must not hang hb (a regular
    // file's reads ignore it).
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => bail!("cannot read key file {shown}: {e}; {}", fix(path)),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => bail!("cannot read key file {shown}: {e}; {}", fix(path)),
    };
    if !meta.is_file() {
        bail!("key file {shown} is not a regular file; {}", fix(path));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {shown} is open to its group or other users (mode {mode:04o}), so they could forge heartbeats: restrict it with `chmod 600 {shown}`"
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "key file {shown} belongs to uid {}, not to uid {me} that runs hb, so that user could change the key: `chown {me} {shown}` (or run hb as its owner)",
            meta.uid()
        );
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.read_to_end(&mut bytes) {
        bail!("cannot read key file {shown}: {e}; {}", fix(path));
    }
    parse(&bytes).map_err(|problem| anyhow::anyhow!("key file {shown}: {problem}; {}", fix(path)))
}

/// The key in `bytes`: 16 raw bytes, or 32 hex digits with an optional
/// trailing newline (`\n` or `\r\n`).
pub fn parse(bytes: &[u8]) -> Result<[u8; KEY_LEN], String> {
    if bytes.len() == KEY_LEN {
        return Ok(bytes.try_into().expect("length checked"));
    }
    let text = bytes
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(bytes);
    if text.len() != 2 * KEY_LEN {
        return Err(format!(
            "expected 32 hex digits or 16 raw bytes, found {} bytes",
            bytes.len()
        ));
    }
    let mut key = [0u8; KEY_LEN];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (hex(pair[0]), hex(pair[1])) {
            (Some(h), Some(l)) => key[i] = (h * 16 + l) as u8,
            _ => {
                return Err(format!(
                    "expected 32 hex digits, found a non-hex character at byte {}",
                    2 * i + usize::from(hex(pair[0]).is_some())
                ));
            }
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f";
    const KEY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn accepted_forms() {
        assert_eq!(parse(HEX.as_bytes()), Ok(KEY));
        assert_eq!(parse(format!("{HEX}\n").as_bytes()), Ok(KEY));
        assert_eq!(parse(format!("{HEX}\r\n").as_bytes()), Ok(KEY));
        assert_eq!(parse(HEX.to_uppercase().as_bytes()), Ok(KEY));
        assert_eq!(parse(&KEY), Ok(KEY));
        // Raw bytes that happen to contain a newline are still raw.
        assert_eq!(parse(b"0123456789abcde\n"), Ok(*b"0123456789abcde\n"));
    }

    #[test]
    fn refused_forms() {
        assert!(parse(b"").unwrap_err().contains("found 0 bytes"));
        assert!(parse(b"00112233").unwrap_err().contains("found 8 bytes"));
        assert!(
            parse(format!("{HEX}\n\n").as_bytes())
                .unwrap_err()
                .contains("found 34 bytes")
        );
        let bad = format!("{}zz", &HEX[..30]);
        assert!(
            parse(bad.as_bytes())
                .unwrap_err()
                .contains("non-hex character at byte 30")
        );
        assert!(parse(format!(" {}", &HEX[1..]).as_bytes()).is_err());
    }

    fn temp(name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("hb-key-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn files() {
        let good = temp("good", HEX.as_bytes(), 0o600);
        assert_eq!(read(&good).unwrap(), KEY);
        let owner_only = temp("owner-only", HEX.as_bytes(), 0o400);
        assert_eq!(read(&owner_only).unwrap(), KEY);
        // Any group or other bit, read, write or execute, is refused.
        for mode in [0o640, 0o620, 0o610, 0o604, 0o602, 0o601, 0o660, 0o644] {
            let f = temp(&format!("mode-{mode:o}"), HEX.as_bytes(), mode);
            let e = format!("{:#}", read(&f).unwrap_err());
            assert!(
                e.contains("chmod 600") && e.contains(&format!("{mode:04o}")),
                "{e}"
            );
            assert!(e.contains(&f.display().to_string()), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }

        let open = temp("open", HEX.as_bytes(), 0o644);
        let e = format!("{:#}", read(&open).unwrap_err());
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        assert!(e.contains(&open.display().to_string()), "{e}");

        let short = temp("short", b"abc\n", 0o600);
        let e = format!("{:#}", read(&short).unwrap_err());
        assert!(
            e.contains("found 4 bytes") && e.contains("head -c 16 /dev/urandom"),
            "{e}"
        );

        let missing = good.with_file_name("missing");
        let e = format!("{:#}", read(&missing).unwrap_err());
        assert!(
            e.contains("cannot read key file") && e.contains("missing"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        let e = format!("{:#}", read(good.parent().unwrap()).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");

        // Owned by another user than the one running hb (tests run as root,
        // which can give a file away; others cannot make one to check).
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = temp("theirs", HEX.as_bytes(), 0o600);
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = format!("{:#}", read(&theirs).unwrap_err());
            assert!(
                e.contains("chown 0")
                    && e.contains("uid 65534")
                    && e.contains(&theirs.display().to_string()),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        } else {
            eprintln!("not root: cannot give a key file to another user here");
        }
        fs::remove_dir_all(good.parent().unwrap()).unwrap();
    }
}
