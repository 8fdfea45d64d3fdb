package binlog

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the captures of one daemon. One Metrics serves every source.
type Metrics struct {
	rows *prometheus.CounterVec
	txs  *prometheus.CounterVec
	txt  *prometheus.CounterVec // by table
	lag  *prometheus.GaugeVec

	snapRows    *prometheus.CounterVec
	snapPending *prometheus.GaugeVec
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
		txt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_binlog_table_transactions_captured_total",
			Help: "Source transactions journaled by binlog capture that changed the table (a transaction that changed two tables counts for each).",
		}, []string{"source", "table"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_binlog_capture_lag_seconds",
			Help: "Time between the commit of the last captured transaction at the source and its journaling.",
		}, []string{"source"}),
		snapRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "music_binlog_snapshot_rows_total",
			Help: "Rows journaled by initial snapshots, by source and table.",
		}, []string{"source", "table"}),
		snapPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "music_binlog_snapshot_tables_pending",
			Help: "Tables whose initial snapshot is not finished (the one in progress included).",
		}, []string{"source"}),
	}
	for _, c := range []prometheus.Collector{m.rows, m.txs, m.txt, m.lag, m.snapRows, m.snapPending} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
