package ownership

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	serving    *prometheus.GaugeVec
	events     *prometheus.CounterVec
	mapVersion prometheus.Gauge
	transfer   prometheus.Histogram
	misrouted  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		serving: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_ownership_serving",
			Help: "1 for each partition this instance owns and serves; 0 once it stopped (moved away, lost, catching up).",
		}, []string{"partition"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_ownership_events_total",
			Help: "Ownership changes made by this instance, by kind (map, catchup, serving, draining, released, lost, failed).",
		}, []string{"kind"}),
		mapVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "music_ownership_map_version",
			Help: "Version of the newest ownership map this instance has read.",
		}),
		transfer: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "music_ownership_transfer_seconds",
			Help:    "Time from winning a partition's election until serving it (fence, record, catch up).",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		misrouted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_ownership_misrouted_rows_total",
			Help: "Rows captured from this site's database while another site owned their partition (reported as conflicts).",
		}, []string{"partition"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.serving, m.events, m.mapVersion, m.transfer, m.misrouted} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
