package testenv

import (
	"fmt"
	"strings"
)

// BacklogInserts returns the statements that insert rows 1..n into db.t (id BIGINT PRIMARY KEY,
// n INT, v VARCHAR(100)), perTx rows a statement: the backlog of the applier and ownership
// benchmarks.
func BacklogInserts(db string, n, perTx int) []string {
	var out []string
	for id := 1; id <= n; {
		var sb strings.Builder
		sb.WriteString("INSERT INTO " + db + ".t (id, n, v) VALUES ")
		for k := 0; k < perTx && id <= n; k, id = k+1, id+1 {
			if k > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "(%d, %d, 'row %d %s')", id, k, id, strings.Repeat("x", 40))
		}
		out = append(out, sb.String())
	}
	return out
}
