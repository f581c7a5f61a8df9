-- Each worker, as it starts, forgets the workers silent for a week
-- (`Operational::forget_workers`): the writer role may delete their rows.
GRANT DELETE ON workers TO slipway_writer;
