//! The mirror tree under `--root`: paths that never leave the root, content types,
//! validators with conditional and range requests, directory listings, and zero-copy
//! bodies.

mod body;
mod conditional;
mod listing;
mod mime;
mod path;
mod root;

pub use body::send_file;
pub use conditional::{parse_range, plan, FileInfo, Plan, RangeSpec};
pub use listing::autoindex;
pub use mime::content_type;
pub use path::{percent_encode, RelPath};
pub use root::{kind, Kind, Root};
