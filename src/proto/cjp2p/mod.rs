//! CJP2P (stub for the download helper's worktree; the integrator replaces this with the node
//! helper's module and adds `pub mod download;`).

pub mod download;
