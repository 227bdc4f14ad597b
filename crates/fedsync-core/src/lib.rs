//! fedsync-core: the engine of fedsync, a two-way file synchronizer that never loses a
//! version. The pipeline is scan -> reconcile -> plan -> apply over two replicas behind
//! one trait; this crate has no terminal, HTTP or argument parsing.

pub mod audit;
pub mod config;
pub mod content;
pub mod engine;
pub mod entry;
pub mod faults;
pub mod history;
pub mod home;
pub mod inspect;
pub mod merge;
pub mod path;
pub mod reconcile;
pub mod remote;
pub mod replica;
pub mod rules;
pub mod scanlist;
pub mod store;
pub mod undo;
pub mod validate;
pub mod verify;
pub mod watcher;

pub use home::Home;
