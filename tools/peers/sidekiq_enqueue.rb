# frozen_string_literal: true

# Enqueue N NoopJob jobs on Sidekiq's "default" queue: `ruby sidekiq_enqueue.rb N`.
# Sidekiq's own client, 1,000 jobs per push_bulk call (REDIS_URL picks the Redis).
require_relative "sidekiq_noop"

count = Integer(ARGV.fetch(0))
(0...count).each_slice(1000) do |slice|
  Sidekiq::Client.push_bulk("class" => NoopJob, "args" => slice.map { |i| [i] })
end
