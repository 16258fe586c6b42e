-- SQS journal: `ferry run examples/sqs.lua` is the capture process; it publishes the ordered
-- replay operations to a FIFO queue (one message group per shard). Run `ferry replay --queue URL
-- --source URL --target URL` on one or more machines to apply them.
local ferry = require "ferry"

return ferry.plan {
  api_version = 1,
  name = "sqs",
  source = { url = ferry.env "SOURCE_URL", capture = "replica" },
  target = { url = ferry.env "TARGET_URL" },
  journal = ferry.sqs {
    queue_url = ferry.env("FERRY_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/ferry.fifo"),
    fifo = true,
  },
  phases = { "snapshot", ferry.catch_up { max_lag_ms = 500 } },
}
