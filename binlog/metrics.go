package binlog

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the captures of one daemon. One Metrics serves every source.
type Metrics struct {
	rows *prometheus.CounterVec
	txs  *prometheus.CounterVec
	lag  *prometheus.GaugeVec
}

// NewMetrics registers the capture metrics in reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_binlog_rows_captured_total",
			Help: "Row changes journaled by binlog capture, by source, table and operation.",
		}, []string{"source", "table", "op"}),
		txs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_binlog_transactions_captured_total",
			Help: "Source transactions journaled by binlog capture.",
		}, []string{"source"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_binlog_capture_lag_seconds",
			Help: "Time between the commit of the last captured transaction at the source and its journaling.",
		}, []string{"source"}),
	}
	for _, c := range []prometheus.Collector{m.rows, m.txs, m.lag} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
