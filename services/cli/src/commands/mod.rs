pub mod bench;
pub mod data;
pub mod generate;
pub mod model;
pub mod train;
pub mod up;
