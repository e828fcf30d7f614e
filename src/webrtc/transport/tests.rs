//! Unit tests of the answering side against offers shaped like the ones real callers send.
