# frozen_string_literal: true

# The Sidekiq side of tools/peers/bench_peers.py: one no-op job class.
# Redis comes from REDIS_URL (Sidekiq's own default lookup); the harness points it at the
# latency proxy for the worker and straight at Redis for the enqueue.
require "logger"
require "sidekiq"

# Sidekiq logs "start" and "done" at INFO for every job; the other peers log nothing per task,
# so WARN here, except in the harness's "as packaged" rows (PEERS_SIDEKIQ_LOG_LEVEL=info).
# Debian pairs Sidekiq 6.4.1 with redis-rb 4.8, which prints a two-line deprecation warning
# (with a caller lookup) for Sidekiq's BRPOP call: once per job. Silenced except in the harness's
# "as packaged" rows (PEERS_SIDEKIQ_DEPRECATIONS=1).
Redis.silence_deprecations = ENV.fetch("PEERS_SIDEKIQ_DEPRECATIONS", "0") != "1"

Sidekiq.configure_server do |config|
  config.logger.level = ENV.fetch("PEERS_SIDEKIQ_LOG_LEVEL", "warn")
end

# The job: takes one argument (its index, so every job is distinct) and does nothing.
class NoopJob
  include Sidekiq::Worker

  def perform(_index); end
end
