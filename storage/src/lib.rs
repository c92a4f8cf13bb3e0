//! Skychimp storage: one interface, a SQLite and a PostgreSQL back end. All SQL lives here.
