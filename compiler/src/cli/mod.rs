//! The subcommands of `inceptc`, one file each, and the arguments they share.

pub(crate) mod args;
pub(crate) mod compile;
pub(crate) mod dump;
pub(crate) mod info;
pub(crate) mod interpret;
