package feeds

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// relayMetrics are the relay's Prometheus metrics. Labels have few values: the stream class.
type relayMetrics struct {
	published prometheus.Counter
	errors    prometheus.Counter
	retries   prometheus.Counter
	lag       *prometheus.GaugeVec
	owned     prometheus.Gauge
	swept     prometheus.Counter
}

func newRelayMetrics(reg prometheus.Registerer) (*relayMetrics, error) {
	m := &relayMetrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_feeds_published_total",
			Help: "Journal entries published to the change feed and confirmed in order by JetStream.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_feeds_publish_errors_total",
			Help: "Change feed publications that failed, timed out or were stored out of order (each is published again).",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_feeds_retries_total",
			Help: "Relay attempts retried after an error, with backoff.",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_feeds_relay_lag_entries",
			Help: "Journal entries not yet confirmed in the change feed, summed over the relayed streams of a class (as of the last head read).",
		}, []string{"class"}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "music_feeds_relayed_streams",
			Help: "Journal streams this instance relays.",
		}),
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "music_feeds_swept_streams_total",
			Help: "Streams the sweeper found with entries that no relay published, and followed.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.published, m.errors, m.retries, m.lag, m.owned, m.swept} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("feeds: relay metrics already registered (one relay per registry)")
			}
			return nil, err
		}
	}
	return m, nil
}
