pub mod bench;
pub mod data;
pub mod export;
pub mod generate;
pub mod model;
pub mod train;
pub mod up;
