package binlog

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/musicd/musicd/policies"
)

// settingsProblems lists what must change on a server before musicd can capture from it, given
// its variables (lower-case names, as SHOW VARIABLES prints them). It is pure, for tests.
func settingsProblems(vars map[string]string, flavor string, replicaID uint32, semiSync bool) []string {
	var out []string
	want := func(name, value, why string) {
		if got, ok := vars[name]; !ok {
			out = append(out, fmt.Sprintf("%s is not supported by this server (%s); MariaDB 10.5+ or MySQL 8.0+ is needed", name, why))
		} else if !strings.EqualFold(got, value) {
			out = append(out, fmt.Sprintf("%s is %s: set %s=%s (%s)", name, got, name, value, why))
		}
	}
	want("log_bin", "ON", "the binary log is what musicd reads")
	want("binlog_format", "ROW", "row events carry the changed rows")
	want("binlog_row_image", "FULL", "full before and after images")
	want("binlog_row_metadata", "FULL", "column names and types in every event, so rows decode with their own schema")
	if flavor == mysql.MySQLFlavor {
		want("gtid_mode", "ON", "capture positions are GTIDs")
		want("enforce_gtid_consistency", "ON", "GTIDs for every transaction")
		if v := vars["binlog_row_value_options"]; v != "" {
			out = append(out, fmt.Sprintf("binlog_row_value_options is %s: set binlog_row_value_options='' (partial JSON updates do not carry whole rows)", v))
		}
	}
	if semiSync {
		want("rpl_semi_sync_master_enabled", "ON", "sync tables are acknowledged to the source only once journaled")
	}
	if id, ok := vars["server_id"]; ok && id == fmt.Sprint(replicaID) {
		out = append(out, fmt.Sprintf("server_id is %s, the same as musicd's replica id for this source: change sources[].server_id", id))
	}
	if id := vars["server_id"]; id == "0" {
		out = append(out, "server_id is 0: set a non-zero server_id")
	}
	return out
}

// checkServer reads the server's settings and returns an error naming everything to change.
func checkServer(ctx context.Context, conn *client.Conn, src SourceConfig) error {
	names := []string{"log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "server_id", "rpl_semi_sync_master_enabled"}
	if src.Flavor == mysql.MySQLFlavor {
		names = append(names, "gtid_mode", "enforce_gtid_consistency", "binlog_row_value_options")
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = "'" + n + "'"
	}
	r, err := conn.Execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + strings.Join(quoted, ",") + ")")
	if err != nil {
		return fmt.Errorf("source %s: reading settings: %w", src.Name, err)
	}
	vars := map[string]string{}
	for i := range r.RowNumber() {
		name, _ := r.GetString(i, 0)
		value, _ := r.GetString(i, 1)
		vars[strings.ToLower(name)] = value
	}
	if problems := settingsProblems(vars, src.Flavor, src.ServerID, src.Tables.HasMode(policies.ModeSync)); len(problems) > 0 {
		return fmt.Errorf("source %s (%s) cannot be captured: %s", src.Name, src.Addr, strings.Join(problems, "; "))
	}
	return nil
}

// currentPosition is the server's GTID position now: where a new capture starts.
func currentPosition(conn *client.Conn, flavor string) (string, error) {
	q := "SELECT @@GLOBAL.gtid_binlog_pos"
	if flavor == mysql.MySQLFlavor {
		q = "SELECT @@GLOBAL.gtid_executed"
	}
	r, err := conn.Execute(q)
	if err != nil {
		return "", err
	}
	return r.GetString(0, 0)
}
