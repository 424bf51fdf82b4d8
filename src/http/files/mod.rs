//! The mirror tree under `--root`: paths that never leave the root, content types,
//! validators with conditional and range requests, directory listings, and zero-copy
//! bodies; whatever may wait for the disk runs on an I/O thread.

mod body;
mod conditional;
mod disk;
mod listing;
mod mime;
mod pages;
mod path;
mod root;
mod walk;

pub use body::{append_if_cached, send_file, Sent};
pub use conditional::{parse_range, plan, FileInfo, Plan, RangeSpec};
pub use disk::{list, open};
pub use mime::content_type;
pub use pages::Pages;
pub use path::{percent_encode, RelPath};
pub use root::{Kind, Root};
