//! `kjump info`, `kjump verify` and `kjump export`.

use std::path::Path;

use kjump_image_format::reader::{read_resume_record, read_superblock};
use kjump_image_format::{FormatError, Image, ImageState, Kdf, Secret, Superblock, PAGE_SIZE};
use kjump_restorer::ScanError;
use kjump_sys::{Place, PlaceReader};
use serde_json::json;

use super::{human, ImageAt, KeyArgs};
use crate::Failure;

/// A read failure, a missing or wrong key is an I/O or usage error;
/// anything else means the image is bad.
fn classify(path: &str, e: FormatError) -> Failure {
    let io = matches!(
        e,
        FormatError::Io { .. }
            | FormatError::KeyRequired
            | FormatError::WrongKey { .. }
            | FormatError::KeyKind { .. }
            | FormatError::Kdf(_)
    );
    let e = anyhow::Error::new(e).context(format!("image {path}"));
    if io {
        Failure::error(e)
    } else {
        Failure::invalid(e)
    }
}

fn classify_scan<E: std::error::Error + Send + Sync + 'static>(
    path: &str,
    e: ScanError<E>,
) -> Failure {
    match e {
        ScanError::Image(e) => classify(path, e),
        other => Failure::error(anyhow::Error::new(other)),
    }
}

fn open_image(path: &str, file: &PlaceReader, secret: Option<&Secret>) -> Result<Image, Failure> {
    let spare = kjump_sys::freemem::MemInfo::spare();
    Image::open_within(file, secret, spare).map_err(|e| classify(path, e))
}

/// The public crypto parameters, shown without the key.
fn encryption_json(sb: &Superblock) -> serde_json::Value {
    let Some(c) = &sb.crypto else {
        return serde_json::Value::Null;
    };
    let mut v = json!({"cipher": "aes-256-gcm"});
    match c.kdf {
        Kdf::KeyFile => v["kdf"] = json!("key-file-hkdf-sha256"),
        Kdf::Argon2id {
            memory_kib,
            iterations,
            lanes,
        } => {
            v["kdf"] = json!("argon2id");
            v["memory_kib"] = json!(memory_kib);
            v["iterations"] = json!(iterations);
            v["lanes"] = json!(lanes);
        }
    }
    v
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` for nanoseconds since the epoch.
fn utc_text(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn info_json(place: &Place, sb: &Superblock, image: Option<&Image>) -> serde_json::Value {
    let path = &place.named;
    let mut v = json!({
        "image": path.display().to_string(),
        "placement": place.placement.kind(),
        "holder": place.holder.display().to_string(),
        "map_offset": place.map_at(),
        "state": sb.state.name(),
        "version": format!("{}.{}", kjump_image_format::superblock::VERSION_MAJOR, sb.version_minor),
        "uuid": uuid_text(&sb.uuid),
        "capture_time_ns": sb.capture_time_ns,
        "capture_time": utc_text(sb.capture_time_ns),
        "encryption": encryption_json(sb),
    });
    if sb.state == ImageState::Consumed {
        v["consumed_time_ns"] = json!(sb.consumed_time_ns);
    }
    restore_record_json(sb, &mut v);
    if sb.state != ImageState::Writing {
        let l = &sb.layout;
        v["pages"] = json!({"total": l.total_pages, "zero": l.zero_pages});
        v["image_bytes"] = json!(l.image_len);
        v["chunks"] = json!(l.chunk_count);
    }
    v["locked"] = json!(sb.state != ImageState::Writing && image.is_none());
    let Some(image) = image else { return v };
    let l = &sb.layout;
    let m = &image.metadata;
    let ranges: Vec<_> = m
        .ranges
        .ranges()
        .iter()
        .map(|r| json!({"start": r.start().0, "end": r.end().0, "bytes": r.len()}))
        .collect();
    v["ranges"] = json!(ranges);
    v["pages"] =
        json!({"total": l.total_pages, "stored": image.stored_pages(), "zero": l.zero_pages});
    v["memory_bytes"] = json!(m.ranges.total_bytes());
    v["image_bytes"] = json!(l.image_len);
    v["data_bytes"] = json!(l.data_len);
    v["chunks"] = json!(l.chunk_count);
    v["ratio"] = json!(l.total_pages as f64 * PAGE_SIZE as f64 / l.image_len as f64);
    v["kernel"] = json!({
        "release": m.kernel_release,
        "build_id": m.build_id,
        "vmcoreinfo_bytes": m.vmcoreinfo.as_ref().map(Vec::len),
        "elf_notes_bytes": m.elf_notes.as_ref().map(Vec::len),
        "jump_back_entry": m.jump_back_entry,
    });
    v["source"] = json!(m.source);
    v["extra"] = m
        .extra
        .iter()
        .map(|(k, val)| (k.clone(), json!(val)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    v
}

/// The restore record: restores begun, and why one failed.
fn restore_record_json(sb: &Superblock, v: &mut serde_json::Value) {
    v["restore_attempts"] = json!(sb.restore.attempts);
    if sb.state == ImageState::Failed {
        v["restore_failure"] = json!({
            "chunk": sb.restore.failed_chunk,
            "reason": sb.restore.failure.text(),
        });
    }
}

fn info_text(place: &Place, sb: &Superblock, image: Option<&Image>) {
    println!("image:      {}", place.describe());
    println!("state:      {}", sb.state.name());
    println!(
        "version:    {}.{}",
        kjump_image_format::superblock::VERSION_MAJOR,
        sb.version_minor
    );
    println!("uuid:       {}", uuid_text(&sb.uuid));
    println!("captured:   {}", utc_text(sb.capture_time_ns));
    if sb.state == ImageState::Consumed {
        println!("consumed:   {}", utc_text(sb.consumed_time_ns));
    }
    if sb.restore.attempts > 0 {
        println!("restores:   {} begun", sb.restore.attempts);
    }
    if sb.state == ImageState::Failed {
        println!(
            "failed:     {} (it will not be resumed again)",
            kjump_restorer::restore::failure_of(sb)
        );
    }
    match &sb.crypto {
        None => println!("encryption: none"),
        Some(c) => println!("encryption: AES-256-GCM, key from a {}", c.kdf.describe()),
    }
    match image {
        Some(image) => image_text(sb, image),
        None if sb.state == ImageState::Writing => {
            println!("(the capture never committed this image: it cannot be resumed or exported)");
        }
        None => sealed_text(place, sb),
    }
}

/// What an encrypted image shows without its key: the superblock's
/// layout and the resume record.
fn sealed_text(place: &Place, sb: &Superblock) {
    let l = &sb.layout;
    println!(
        "pages:      {} total, {} zero; image {} in {} chunks",
        l.total_pages,
        l.zero_pages,
        human(l.image_len),
        l.chunk_count
    );
    let record = place
        .reader()
        .map_err(|e| e.to_string())
        .and_then(|f| read_resume_record(&f).map_err(|e| e.to_string()));
    match record {
        Ok(r) => {
            println!(
                "ranges:     {} (physical, inclusive; from the resume record, in the clear)",
                r.ranges.ranges().len()
            );
            for range in r.ranges.ranges() {
                println!("  {:>18} {:>12}", range.to_string(), human(range.len()));
            }
            for (k, v) in &r.extra {
                println!("meta:       {k}={v}");
            }
        }
        Err(e) => println!("resume record: {e}"),
    }
    println!("(encrypted: give --key-file or --passphrase-file to check it and see its kernel and the rest of its metadata)");
}

/// What an opened image shows: its kernel, ranges, pages and metadata.
fn image_text(sb: &Superblock, image: &Image) {
    let (l, m) = (&sb.layout, &image.metadata);
    let unknown = || "unknown".to_string();
    println!(
        "kernel:     {}",
        m.kernel_release.clone().unwrap_or_else(unknown)
    );
    println!("build id:   {}", m.build_id.clone().unwrap_or_else(unknown));
    if let Some(e) = m.jump_back_entry {
        println!("re-entry:   {e:#x}");
    }
    if let Some(s) = &m.source {
        println!("source:     {s}");
    }
    println!(
        "ranges:     {} (physical, inclusive)",
        m.ranges.ranges().len()
    );
    for r in m.ranges.ranges() {
        println!("  {:>18} {:>12}", r.to_string(), human(r.len()));
    }
    println!(
        "pages:      {} total, {} stored, {} zero ({:.1}%)",
        l.total_pages,
        image.stored_pages(),
        l.zero_pages,
        l.zero_pages as f64 * 100.0 / l.total_pages.max(1) as f64
    );
    println!(
        "size:       memory {}, image {} in {} chunks, ratio {:.2}",
        human(m.ranges.total_bytes()),
        human(l.image_len),
        l.chunk_count,
        (l.total_pages * PAGE_SIZE as u64) as f64 / l.image_len as f64
    );
    for (k, v) in &m.extra {
        println!("meta:       {k}={v}");
    }
}

pub fn info(at: &ImageAt, key: &KeyArgs, as_json: bool) -> Result<(), Failure> {
    let (place, file) = at.open()?;
    let shown = place.describe();
    let path = shown.as_str();
    let sb = read_superblock(&file).map_err(|e| classify(path, e))?;
    let secret = key.secret()?;
    let image = match sb.state {
        ImageState::Writing => None,
        // Without the key, what the superblock says in the clear.
        _ if sb.crypto.is_some() && secret.is_none() => None,
        _ => Some(open_image(path, &file, secret.as_ref())?),
    };
    if as_json {
        println!("{:#}", info_json(&place, &sb, image.as_ref()));
    } else {
        info_text(&place, &sb, image.as_ref());
    }
    Ok(())
}

pub fn verify(at: &ImageAt, key: &KeyArgs, threads: Option<usize>) -> Result<(), Failure> {
    let (place, file) = at.open()?;
    let shown = place.describe();
    let path = shown.as_str();
    let image = open_image(path, &file, key.secret()?.as_ref())?;
    let report = kjump_restorer::verify(
        &file,
        &image,
        super::threads(threads),
        super::progress_line(),
    )
    .map_err(|e| classify_scan(path, e))?;
    let secs = report.elapsed.as_secs_f64();
    let state = match image.superblock.state {
        ImageState::Consumed => " (consumed: a restore has taken it, it will not be resumed again)",
        ImageState::Failed => {
            " (failed: a restore stopped part way through it, it will not be resumed again)"
        }
        _ => "",
    };
    let sealed = if image.is_encrypted() {
        ", encrypted and authentic"
    } else {
        ""
    };
    println!(
        "ok: {} is whole{sealed}{state}: {} chunks, {} stored and {} zero pages, {} checked in {:.2} s ({:.2} GB/s)",
        path,
        report.chunks,
        report.stored_pages,
        report.zero_pages,
        human(report.image_bytes),
        secs,
        report.image_bytes as f64 / secs.max(1e-9) / 1e9
    );
    Ok(())
}

/// Refuses an `output` that is the image (`at`, on `holder`, shown as
/// `path`) or a device node.
fn check_output(output: &Path, at: &ImageAt, holder: &Path, path: &str) -> Result<(), Failure> {
    if super::same_file(output, &at.image) || super::same_file(output, holder) {
        return Err(Failure::error(anyhow::anyhow!(
            "--output {} is the image {path} itself: exporting would destroy it",
            output.display()
        )));
    }
    if std::fs::metadata(output).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device() || m.file_type().is_char_device()
    }) {
        return Err(Failure::error(anyhow::anyhow!(
            "--output {} is a device node: export writes an ELF core into a regular file",
            output.display()
        )));
    }
    Ok(())
}

/// `export --format kdump`: the image `path` as a kdump-compressed file.
fn export_as_kdump(
    file: &PlaceReader,
    image: &Image,
    path: &str,
    output: &Path,
    codec: super::kdump::KdumpCodec,
    threads: Option<usize>,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let (len, dumped) =
        super::kdump::export_kdump(file, image, output, codec, super::threads(threads)).map_err(
            |e| {
                // A partial file must not pass for a whole one.
                let _ = std::fs::remove_file(output);
                Failure::error(e.context(format!("exporting {path} to {}", output.display())))
            },
        )?;
    println!(
        "exported {} to {}: kdump-compressed ({codec:?}) of {} with {} frames dumped in {:.2} s",
        path,
        output.display(),
        human(len),
        dumped,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn export(
    at: &ImageAt,
    key: &KeyArgs,
    output: &Path,
    (format, codec): (crate::ExportFormat, super::kdump::KdumpCodec),
    threads: Option<usize>,
) -> Result<(), Failure> {
    let (place, file) = at.open()?;
    let shown = place.describe();
    let path = shown.as_str();
    check_output(output, at, &place.holder, path)?;
    let image = open_image(path, &file, key.secret()?.as_ref())?;
    if format == crate::ExportFormat::Kdump {
        return export_as_kdump(&file, &image, path, output, codec, threads);
    }
    let report = kjump_restorer::export(
        &file,
        &image,
        output,
        super::threads(threads),
        super::progress_line(),
    )
    .map_err(|e| match e {
        kjump_restorer::ExportError::Image(s) => classify_scan(path, s),
        other => Failure::error(other),
    })?;
    println!(
        "exported {} to {}: ELF core of {} with {} PT_LOAD segments in {:.2} s",
        path,
        output.display(),
        human(report.file_len),
        report.segments,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::utc_text(1_795_753_403 * 1_000_000_000),
            "2026-11-27 04:23:23 UTC"
        );
        assert_eq!(
            super::utc_text(951_782_400 * 1_000_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
