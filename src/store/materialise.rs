//! Materialised outputs: the read-only folder of a committed entry, hard links (or copies) of its
//! objects, rebuilt when damaged; what downstream stages get as inputs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::commit::is_cross_device_or_link_limit;
use super::digest::Digest;
use super::entry::Manifest;
use super::fsutil::{self, at, io_error, unique_suffix};
use super::{Store, StoreError};

impl Store {
    /// The output folder of a committed entry: `outputs/<key>/`, hard links to the objects (copies
    /// across filesystems). Rebuilt if missing or damaged (a file removed, added or resized).
    pub fn outputs(&self, manifest: &Manifest) -> Result<PathBuf, StoreError> {
        let folder = self.outputs_path(&manifest.key);
        if self.outputs_intact(manifest, &folder) {
            return Ok(folder);
        }
        let building = self.dir("outputs").join(format!(
            ".tmp-{}.{}",
            manifest.key.to_hex(),
            unique_suffix()
        ));
        let result = self.build_outputs(manifest, &building);
        if let Err(error) = result {
            let _ = fsutil::remove_tree(&building);
            return Err(error);
        }
        if folder.exists() {
            let trash = self.dir("outputs").join(format!(
                ".trash-{}.{}",
                manifest.key.to_hex(),
                unique_suffix()
            ));
            if fs::rename(&folder, &trash).is_ok() {
                fsutil::remove_tree(&trash)?;
            }
        }
        if let Err(error) = fs::rename(&building, &folder) {
            // Another process materialised it at the same moment; use theirs if it is intact.
            let _ = fsutil::remove_tree(&building);
            if !self.outputs_intact(manifest, &folder) {
                return Err(io_error("materialising outputs into", &folder, error));
            }
        }
        Ok(folder)
    }

    fn build_outputs(&self, manifest: &Manifest, building: &Path) -> Result<(), StoreError> {
        fs::create_dir_all(building).map_err(at("creating", building))?;
        for dir in &manifest.empty_dirs {
            let path = building.join(dir);
            fs::create_dir_all(&path).map_err(at("creating", &path))?;
        }
        for entry in &manifest.files {
            let object = self.object_path(&entry.digest);
            if !object.is_file() {
                return Err(StoreError::MissingObject {
                    key: manifest.key,
                    digest: entry.digest,
                    path: object,
                });
            }
            let target = building.join(&entry.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(at("creating", parent))?;
            }
            match fs::hard_link(&object, &target) {
                Ok(()) => {}
                Err(error) if is_cross_device_or_link_limit(&error) => {
                    fs::copy(&object, &target).map_err(at("copying into", &target))?;
                    fs::set_permissions(&target, fs::Permissions::from_mode(0o444))
                        .map_err(at("making read-only", &target))?;
                }
                Err(error) => return Err(io_error("linking", &target, error)),
            }
        }
        Ok(())
    }

    /// Whether `folder` holds exactly the manifest's files, each linked to (or a copy of) its object.
    fn outputs_intact(&self, manifest: &Manifest, folder: &Path) -> bool {
        let Ok(walk) = fsutil::walk(folder) else {
            return false;
        };
        walk.files.len() == manifest.files.len()
            && walk
                .files
                .iter()
                .zip(&manifest.files)
                .all(|(found, entry)| {
                    found.relative == entry.path
                        && !found.is_symlink
                        && found.metadata.len() == entry.bytes
                        && self.is_link_or_copy_of(&found.metadata, &entry.digest)
                })
    }

    /// On the objects' filesystem an output file must be a hard link to its object (same inode);
    /// elsewhere it is a copy (size already checked). Catches a re-commit of the key with other
    /// bytes of the same size, and files replaced by the user.
    fn is_link_or_copy_of(&self, found: &fs::Metadata, digest: &Digest) -> bool {
        match fs::metadata(self.object_path(digest)) {
            Ok(object) => object.dev() != found.dev() || object.ino() == found.ino(),
            Err(_) => false,
        }
    }
}
