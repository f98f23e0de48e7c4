//! Checking backups against their manifests, and restoring one into a new
//! data directory; neither needs a running node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toplog_compaction::ObjectArchive;

use super::{FileEntry, Manifest, copy_object, list, object_key, read_manifest};

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Verified {
    /// The backups checked, oldest first.
    pub(crate) backups: Vec<String>,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    /// One line for each file (or manifest) that does not match, naming it.
    pub(crate) problems: Vec<String>,
}

/// Checks backup `id` (every backup at the location when `None`): each
/// manifest's checksum, and each file's object against its size and SHA-256.
pub(crate) fn verify(store: &ObjectArchive, id: Option<&str>) -> anyhow::Result<Verified> {
    let ids = match id {
        Some(id) => vec![id.to_owned()],
        None => list(store)?,
    };
    if ids.is_empty() {
        anyhow::bail!("no backup at {}", store.location());
    }
    let mut out = Verified::default();
    // Objects are shared between backups: each is read once.
    let mut checked: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for id in ids {
        let manifest = match read_manifest(store, &id) {
            Ok(m) => m,
            Err(e) => {
                out.problems.push(e);
                out.backups.push(id);
                continue;
            }
        };
        for (path, entry) in manifest.entries() {
            let result = checked
                .entry(entry.sha256.clone())
                .or_insert_with(|| fetch(store, entry, &mut std::io::sink()));
            if let Err(why) = result {
                out.problems.push(format!(
                    "backup {id}: {path} ({}): {why}",
                    object_key(&entry.sha256)
                ));
            }
            out.files += 1;
            out.bytes += entry.bytes;
        }
        out.backups.push(id);
    }
    Ok(out)
}

/// Copies `entry`'s object into `out`, refused unless its bytes are the
/// file's (what was written must then be thrown away).
fn fetch(
    store: &ObjectArchive,
    entry: &FileEntry,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    let (sha256, size) =
        copy_object(store, &object_key(&entry.sha256), out).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "missing".to_owned(),
            _ => e.to_string(),
        })?;
    if size != entry.bytes {
        return Err(format!("{size} bytes, the manifest says {}", entry.bytes));
    }
    if sha256 != entry.sha256 {
        return Err("checksum mismatch: the bytes are damaged".into());
    }
    Ok(())
}

/// Restores backup `id` (the newest when `None`) into `data_dir`, which must
/// not exist or be empty: every file checked before it is written, into a
/// directory beside it that is renamed into place only once all are synced.
/// What a person starting the node needs to know.
/// With `archive_to`, the archive objects the backup holds are put there
/// (those it holds already, of the same size, are left), before the data
/// directory is in place: a node started on it with that archive finds them.
pub(crate) fn restore(
    store: &ObjectArchive,
    id: Option<&str>,
    data_dir: &Path,
    archive_to: Option<&ObjectArchive>,
) -> anyhow::Result<String> {
    let id = match id {
        Some(id) => id.to_owned(),
        None => (list(store)?.pop())
            .ok_or_else(|| anyhow::anyhow!("no backup at {}", store.location()))?,
    };
    let manifest =
        read_manifest(store, &id).map_err(|e| anyhow::anyhow!("{e}; nothing restored"))?;
    if std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty: restore into a new directory",
            data_dir.display()
        );
    }
    let name = data_dir
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a directory name", data_dir.display()))?;
    let partial = data_dir.with_file_name(format!(
        "{}.restoring-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_all(store, &manifest, &partial)
        .and_then(|()| match archive_to {
            Some(archive) => put_archive(store, &manifest, archive, &partial),
            None => Ok(()),
        })
        .and_then(|()| {
            if data_dir.exists() {
                std::fs::remove_dir(data_dir)?;
            }
            std::fs::rename(&partial, data_dir)?;
            sync_dir(data_dir.parent().unwrap_or(Path::new(".")))?;
            Ok(())
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e.context(format!("backup {id}: nothing restored")));
    }
    let mut text = format!(
        "restored backup {id} (log index {}, {} files, {} bytes) into {}",
        manifest.index,
        manifest.files.len(),
        manifest.bytes(),
        data_dir.display()
    );
    if !manifest.key_ids.is_empty() {
        text += &format!(
            "\nits files are encrypted: start the node with the keys {}",
            manifest.key_ids.join(", ")
        );
    }
    match (&manifest.external_archive, archive_to) {
        (Some(_), Some(to)) => {
            text += &format!(
                "\n{} archive objects put into {}: start the node with archive.url there",
                manifest.archive_objects.len(),
                to.location()
            );
        }
        (Some(archive), None) if manifest.archive_objects.is_empty() => {
            text += &format!("\nits archived segments are in {archive}: set archive.url to it");
        }
        (Some(archive), None) => {
            text += &format!(
                "\nits archived segments are in {archive} (set archive.url to it); the backup holds a copy of them: if that archive is lost, restore again with --archive-to a new one"
            );
        }
        (None, _) => {}
    }
    Ok(text)
}

/// Puts the backup's copy of an outside archive into `archive`, each object
/// checked on its way through a file in `dir` (removed after).
fn put_archive(
    store: &ObjectArchive,
    manifest: &Manifest,
    archive: &ObjectArchive,
    dir: &Path,
) -> anyhow::Result<()> {
    use toplog_engine::ArchiveStore;
    let scratch = dir.join(".archive-object");
    for (key, entry) in &manifest.archive_objects {
        if archive.size(key).is_ok_and(|size| size == entry.bytes) {
            continue;
        }
        let mut file = std::io::BufWriter::new(std::fs::File::create(&scratch)?);
        fetch(store, entry, &mut file).map_err(|why| {
            anyhow::anyhow!(
                "archive object {key} ({}): {why}",
                object_key(&entry.sha256)
            )
        })?;
        file.into_inner().map_err(|e| e.into_error())?;
        archive.upload_file(key, &scratch).map_err(|e| {
            anyhow::anyhow!("archive object {key} into {}: {e}", archive.location())
        })?;
    }
    if scratch.exists() {
        std::fs::remove_file(&scratch)?;
    }
    Ok(())
}

fn write_all(store: &ObjectArchive, manifest: &Manifest, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    create_private_dir(dir)?;
    let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
    for (path, entry) in &manifest.files {
        let full = dir.join(path);
        if let Some(parent) = full.parent().filter(|p| !p.exists()) {
            std::fs::create_dir_all(parent)?;
            dirs.push(parent.to_path_buf());
        }
        let mut file = std::io::BufWriter::new(private_file(&full)?);
        fetch(store, entry, &mut file)
            .map_err(|why| anyhow::anyhow!("{path} ({}): {why}", object_key(&entry.sha256)))?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A new file only its owner reads: state files hold key hashes and channel
/// secrets.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
