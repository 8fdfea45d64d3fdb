package api

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMusicV2Integration drives every MUSIC v2 endpoint over real HTTP against an api.Server on a
// real *state.Service, in embedded mode and in distributed mode (Cassandra and ZooKeeper), with
// the request bodies of MUSIC's own documentation and examples (its swagger annotations and
// Postman collection), and checks the responses field by field: status, top-level members,
// message or error, result rows, lock fields, and the version headers echoed. It covers bad
// input, a critical write and a critical get by a lock id that does not hold the lock, and a
// dependency going down (503), and asserts that no answer of the scenario was a 500.
func TestMusicV2Integration(t *testing.T) {
	for _, mode := range []string{"embedded", "distributed"} {
		t.Run(mode, func(t *testing.T) {
			start := time.Now()
			var e *itEnv
			if mode == "embedded" {
				e = newEmbeddedIT(t)
			} else {
				e = newDistributedIT(t)
			}
			e.runMusic(t, musicScenario())
			e.verifyMusicCoverage(t)
			t.Logf("%s: %s, %d requests", mode, time.Since(start).Round(time.Millisecond), len(e.records()))
		})
	}
}

const (
	mb  = "/MUSIC/rest/v2"
	mks = mb + "/keyspaces/${ks}"
	// mEmp is the table of MUSIC's examples.
	mEmp = mks + "/tables/employees"
	// mPQ is the priority queue of the scenario (MUSIC's RestMusicQAPI tests use "employees").
	mPQ = mb + "/priorityq/keyspaces/${ks}/employees"
	// mAbsent is the expected value of a member that must not be there.
	mAbsent = "<absent>"
)

// mStep is one request of the scenario and what its answer must be, or an action.
type mStep struct {
	name   string
	only   string // "embedded" or "distributed": this mode only
	action func(t *testing.T, e *itEnv)

	method, path, body string
	// hdr are request headers; Authorization defaults to the writer's basic credentials, ""
	// removes it.
	hdr  map[string]string
	want int
	// keys are the answer's top-level members, exactly (nil: not checked).
	keys []string
	// fields are values at dotted paths ("lock.lock-status", "result.row 0.emp_name"); strings
	// are expanded; nil is JSON null; mAbsent: the member is not there.
	fields map[string]any
	// errHas must be part of the answer's "error".
	errHas string
	save   map[string]string // variable: dotted JSON path
	check  itCheck
}

func mF(kv ...any) map[string]any {
	m := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// Bodies as MUSIC's documentation and examples write them.
const (
	mKeyspaceBody = `{"replicationInfo": {"class": "SimpleStrategy", "replication_factor": 1},
		"durabilityOfWrites": "true", "consistencyInfo": {"type": "eventual"}}`
	mTableWithMap = `{"fields": {"emp_id": "uuid", "emp_name": "text", "emp_salary": "varint", "address": "Map<text,text>", "PRIMARY KEY": "(emp_name)"},
		"properties": {"comment": "Financial Info of employees", "compression": {"sstable_compression": "DeflateCompressor", "chunk_length_kb": 64},
		"compaction": {"class": "SizeTieredCompactionStrategy", "min_threshold": 6}}, "consistencyInfo": {"type": "eventual"}}`
	mTableBody = `{"fields": {"emp_id": "uuid", "emp_name": "text", "emp_salary": "varint", "PRIMARY KEY": "(emp_name)"},
		"properties": {"comment": "Financial Info of employees", "compression": {"sstable_compression": "DeflateCompressor", "chunk_length_kb": 64},
		"compaction": {"class": "SizeTieredCompactionStrategy", "min_threshold": 6}}, "consistencyInfo": {"type": "eventual"}}`
	mInsertJoe = `{"values": {"emp_id": "abc66ccc-d857-4e90-b1e5-df98a3d40cd6", "emp_name": "joe", "emp_salary": 30},
		"consistencyInfo": {"type": "eventual"}}`
	mInsertBharath = `{"values": {"emp_id": "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "emp_name": "bharath", "emp_salary": 50},
		"consistencyInfo": {"type": "critical", "lockId": "${lock1}"}}`
	mPlanInsert = `{"primaryKey": "id", "primaryKeyValue": "p1", "casscadeColumnName": "plans",
		"tableValues": {"id": "p1", "name": "first"},
		"casscadeColumnData": {"key": "plan1", "value": {"state": "new"}},
		"conditions": {"exists": {"status": "updated"}, "nonexists": {"status": "created"}}}`
	mPlanUpdate = `{"primaryKey": "id", "primaryKeyValue": "p1", "casscadeColumnName": "plans",
		"tableValues": {"name": "second"}, "casscadeColumnData": {"key": "plan1", "value": {"state": "done"}}}`
)

// mPQTable is MUSIC's createQ body (TestRestMusicQAPI), the priority column emp_salary.
const mPQTable = `{"fields": {"uuid": "text", "emp_name": "text", "emp_salary": "varint"}, "partitionKey": "emp_name", "clusteringKey": "emp_salary",
	"clusteringOrder": "emp_salary DESC", "consistencyInfo": {"type": "eventual"}}`

// mPQInsert500 is MUSIC's insertIntoQ body: its salary is no priority level.
const mPQInsert500 = `{"values": {"uuid": "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "emp_name": "testName", "emp_salary": 500}, "consistencyInfo": {"type": "eventual"}}`

// mPQInsert is MUSIC's insertIntoQ body with another salary (a priority 0-15), uuid and name.
func mPQInsert(salary int, uuid, name string) string {
	return fmt.Sprintf(`{"values": {"uuid": %q, "emp_name": %q, "emp_salary": %d}, "consistencyInfo": {"type": "eventual"}}`, uuid, name, salary)
}

var (
	mOK      = []string{"status", "message"}
	mFail    = []string{"status", "error"}
	mLockOK  = []string{"status", "lock"}
	mRowsOK  = []string{"status", "result"}
	mNoRows  = []string{"status", "result", "error"}
	asMusicR = itH("Authorization", basic("reader", itReaderToken))
	critGet  = itH(headerMusicMinor, "1", headerMusicPatch, "0")
)

func critical(lock string) string {
	return `{"consistencyInfo": {"type": "critical", "lockId": "` + lock + `"}}`
}

func musicScenario() []mStep {
	lockRE := func(path, name string) itCheck {
		return func(t *testing.T, e *itEnv, r itResp) {
			t.Helper()
			re := regexp.MustCompile(`^\$` + regexp.QuoteMeta(e.expand(t, name)) + `\$w-[0-9a-f]+-[0-9]+$`)
			if s, _ := r.get(path).(string); !re.MatchString(s) {
				t.Errorf("%s = %q, want a lock id $%s$<reference>", path, s, e.expand(t, name))
			}
		}
	}
	return []mStep{
		// ---- version, health, authentication ----
		{name: "version", method: "GET", path: mb + "/version", hdr: itH("Authorization", ""), want: 200,
			keys: []string{"status", "version"}, fields: mF("status", "SUCCESS", "version", "MUSIC:3.2.40")},
		{name: "version: the client's minor and patch are echoed", method: "GET", path: mb + "/version", hdr: itH(headerMusicMinor, "1", headerMusicPatch, "0"), want: 200,
			check: itAll(headerIs(headerMusicMinor, "1"), headerIs(headerMusicPatch, "0"))},
		{name: "version build", method: "GET", path: mb + "/version/build", want: 200,
			keys: []string{"status", "version", "build"}, fields: mF("status", "SUCCESS", "version", "MUSIC:3.2.40"), check: jsonHasPrefix("build", "MUSIC:3.2.40-musicd-")},
		{name: "health check", method: "GET", path: mb + "/service/musicHealthCheck", hdr: itH("Authorization", ""), want: 200,
			keys: []string{"MUSIC", "Cassandra"}, fields: mF("MUSIC", "Active", "Cassandra", "Active")},
		{name: "ping", method: "GET", path: mb + "/service/pingCassandra/ONE", want: 200,
			keys: []string{"status", "message", "ACTIVE"}, fields: mF("status", "ACTIVE", "message", musicActive, "ACTIVE", musicActive)},
		{name: "ping: bad consistency", method: "GET", path: mb + "/service/pingCassandra/MOST", want: 400,
			keys: []string{"status", "message", "INVALID"}, fields: mF("status", "INVALID", "INVALID", "INVALID")},
		{name: "no credentials", method: "POST", path: mks, body: mKeyspaceBody, hdr: itH("Authorization", ""), want: 401,
			keys: mFail, fields: mF("status", "FAILURE"), errHas: "basic credentials", check: headerHas("WWW-Authenticate", `Basic realm="musicd"`)},
		{name: "wrong password", method: "POST", path: mks, body: mKeyspaceBody, hdr: itH("Authorization", basic("writer", "it-nobody-0123456789abcdef")), want: 401,
			keys: mFail, errHas: "unknown credentials"},
		{name: "user name of another token", method: "POST", path: mks, body: mKeyspaceBody, hdr: itH("Authorization", basic("reader", itWriterToken)), want: 401, keys: mFail},
		{name: "read-only credentials cannot create", method: "POST", path: mks, body: mKeyspaceBody, hdr: asMusicR, want: 401, keys: mFail, errHas: "read-only"},
		{name: "unknown endpoint", method: "GET", path: mb + "/nothing", want: 404, keys: mFail, fields: mF("status", "FAILURE")},
		{name: "method not allowed", method: "PATCH", path: mks, want: 405, keys: mFail, check: headerIs("Allow", "POST, DELETE")},
		{name: "priorityq: unknown endpoint", method: "GET", path: mPQ + "/nothing", want: 404, keys: mFail},

		// ---- keyspaces ----
		{name: "create keyspace", method: "POST", path: mks, body: mKeyspaceBody, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Keyspace ${ks} Created")},
		{name: "create keyspace again", method: "POST", path: mks, body: mKeyspaceBody, want: 400, keys: mFail, fields: mF("status", "FAILURE"), errHas: "exists"},
		{name: "create keyspace: no replicationInfo", method: "POST", path: mb + "/keyspaces/${ks2}", body: `{"consistencyInfo": {"type": "eventual"}}`, want: 400,
			keys: mFail, errHas: "Incomplete Request body"},
		{name: "create keyspace: unknown class", method: "POST", path: mb + "/keyspaces/${ks2}", body: `{"replicationInfo": {"class": "OldNetworkTopologyStrategy"}}`, want: 400, keys: mFail, errHas: "OldNetworkTopologyStrategy"},
		{name: "create keyspace: bad factor", method: "POST", path: mb + "/keyspaces/${ks2}", body: `{"replicationInfo": {"class": "SimpleStrategy", "replication_factor": "many"}}`, want: 400, keys: mFail, errHas: "replication_factor"},
		{name: "create keyspace: bad JSON", method: "POST", path: mb + "/keyspaces/${ks2}", body: `{"replicationInfo": `, want: 400, keys: mFail, errHas: "JSON"},
		{name: "create keyspace: body too large", method: "POST", path: mb + "/keyspaces/${ks2}", body: `{"x":"` + strings.Repeat("k", itMaxBody) + `"}`, want: 413, keys: mFail},
		{name: "create keyspace (NetworkTopologyStrategy)", method: "POST", path: mb + "/keyspaces/${ks2}",
			body: `{"replicationInfo": {"class": "NetworkTopologyStrategy", "dc1": 1}, "durabilityOfWrites": "true", "consistencyInfo": {"type": "eventual"}}`, want: 200,
			keys: mOK, fields: mF("message", "Keyspace ${ks2} Created")},
		{name: "drop keyspace", method: "DELETE", path: mb + "/keyspaces/${ks2}", body: `{"consistencyInfo": {"type": "eventual"}}`, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Keyspace ${ks2} Deleted")},
		{name: "drop keyspace again", method: "DELETE", path: mb + "/keyspaces/${ks2}", want: 400, keys: mFail},

		// ---- tables ----
		{name: "create table: a map column", method: "POST", path: mEmp, body: mTableWithMap, want: 400, keys: mFail, errHas: `fields.address: type "Map<text,text>" is not supported`},
		{name: "create table", method: "POST", path: mEmp, body: mTableBody, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "TableName employees Created under keyspace ${ks}")},
		{name: "create table again", method: "POST", path: mEmp, body: mTableBody, want: 400, keys: mFail, errHas: "exists"},
		{name: "create table in a missing keyspace", method: "POST", path: mb + "/keyspaces/${ks}x/tables/employees", body: mTableBody, want: 400, keys: mFail},
		{name: "create table: no primary key", method: "POST", path: mks + "/tables/nokey", body: `{"fields": {"a": "text", "b": "text"}}`, want: 400, keys: mFail, errHas: "primary key"},
		{name: "create table: descending clustering", method: "POST", path: mks + "/tables/projects",
			body: `{"fields": {"project_name": "text", "year": "int", "project_desc": "text", "PRIMARY KEY": "((project_name), year)"}, "clusteringOrder": "year DESC"}`, want: 400, keys: mFail, errHas: "descending"},
		{name: "create table with a composite key", method: "POST", path: mks + "/tables/projects",
			body: `{"fields": {"project_name": "text", "year": "int", "project_desc": "text", "PRIMARY KEY": "((project_name), year)"}, "consistencyInfo": {"type": "eventual"}}`, want: 200,
			keys: mOK, fields: mF("message", "TableName projects Created under keyspace ${ks}")},
		{name: "create index", method: "POST", path: mEmp + "/index/emp_salary", want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Index Created on ${ks}.employees.emp_salary")},
		{name: "create index: unknown column", method: "POST", path: mEmp + "/index/nope?index_name=x", want: 400, keys: mFail, errHas: "no column"},

		// ---- ownership: ${ks}.remote is site b's (see itEnv.startOwnership) ----
		{name: "create table remote", method: "POST", path: mks + "/tables/remote",
			body: `{"fields": {"id": "text", "v": "text", "PRIMARY KEY": "(id)"}, "consistencyInfo": {"type": "eventual"}}`, want: 200, keys: mOK},
		{name: "insert at a non-owner", method: "POST", path: mks + "/tables/remote/rows", body: `{"values": {"id": "r1", "v": "x"}, "consistencyInfo": {"type": "eventual"}}`,
			want: 400, keys: mFail, errHas: "owned by site b (b.it:8080)"},
		{name: "the refused insert changed nothing", method: "GET", path: mks + "/tables/remote/rows?id=r1", want: 200, keys: mNoRows},

		// ---- rows, eventual ----
		{name: "insert joe (eventual)", method: "POST", path: mEmp + "/rows", body: mInsertJoe, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Insert Successful")},
		{name: "select joe", method: "GET", path: mEmp + "/rows?emp_name=joe", hdr: asMusicR, want: 200, keys: mRowsOK,
			fields: mF("status", "SUCCESS", "result.row 0.emp_name", "joe", "result.row 0.emp_id", "abc66ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 0.emp_salary", 30, "result.row 1", mAbsent)},
		{name: "select with a bearer token", method: "GET", path: mEmp + "/rows?emp_name=joe", hdr: itH("Authorization", "Bearer "+itReaderToken), want: 200, keys: mRowsOK},
		{name: "select: nothing found", method: "GET", path: mEmp + "/rows?emp_name=nobody", want: 200, keys: mNoRows,
			fields: mF("status", "SUCCESS", "error", "No data found"), check: jsonIsEmptyObject("result")},
		{name: "select: unknown column", method: "GET", path: mEmp + "/rows?salary=1", want: 400, keys: mFail},
		{name: "update joe (eventual)", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 35}, "consistencyInfo": {"type": "eventual"}}`, want: 200,
			keys: mOK, fields: mF("message", "Eventual Operation Successfully performed")},
		{name: "select joe after the update", method: "GET", path: mEmp + "/rows?emp_name=joe", want: 200,
			fields: mF("result.row 0.emp_salary", 35, "result.row 0.emp_id", "abc66ccc-d857-4e90-b1e5-df98a3d40cd6")},
		{name: "update: wrong consistency type", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 1}, "consistencyInfo": {"type": "quorum"}}`, want: 400,
			keys: mFail, errHas: `consistencyInfo.type "quorum"`},
		{name: "update: no consistencyInfo", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 1}}`, want: 400, keys: mFail, errHas: "consistencyInfo.type is missing"},
		{name: "update: no row identifier", method: "PUT", path: mEmp + "/rows", body: `{"values": {"emp_salary": 1}, "consistencyInfo": {"type": "eventual"}}`, want: 400,
			keys: mFail, fields: mF("error", musicParameterError)},
		{name: "update: identifier not in the key", method: "PUT", path: mEmp + "/rows?emp_salary=35", body: `{"values": {"emp_salary": 1}, "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, errHas: "not a primary key column"},
		{name: "update: ttl", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 1}, "ttl": "30", "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, errHas: "ttl is not supported"},
		{name: "update: a value of the wrong type", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": "lots"}, "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, errHas: "emp_salary"},
		{name: "update: unknown keyspace", method: "PUT", path: mb + "/keyspaces/${ks}x/tables/employees/rows?emp_name=joe", body: `{"values": {"emp_salary": 1}, "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail},
		{name: "update: by the reader", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 1}, "consistencyInfo": {"type": "eventual"}}`, hdr: asMusicR, want: 401, keys: mFail},
		{name: "update joe (atomic)", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 40}, "consistencyInfo": {"type": "atomic"}}`, want: 200,
			keys: mOK, fields: mF("message", "Update performed")},

		// ---- locks ----
		{name: "create lock", method: "POST", path: mb + "/locks/create/${ks}.employees.bharath", want: 200, keys: mLockOK,
			fields: mF("status", "SUCCESS", "lock.lock-status", mAbsent), save: itH("lock1", "lock.lock"), check: lockRE("lock.lock", "${ks}.employees.bharath")},
		{name: "acquire", method: "GET", path: mb + "/locks/acquire/${lock1}", want: 200, keys: []string{"status", "lock", "message"},
			fields: mF("status", "SUCCESS", "lock.lock", "${lock1}"), check: func(t *testing.T, e *itEnv, r itResp) {
				id := e.vars["lock1"][strings.LastIndex(e.vars["lock1"], "$")+1:]
				jsonIs("message", id+" is the lock holder for the key")(t, e, r)
			}},
		{name: "create a second lock reference", method: "POST", path: mb + "/locks/create/${ks}.employees.bharath", body: `{"lockType": "WRITE"}`, hdr: itH("owner", "second"), want: 200,
			save: itH("lock2", "lock.lock"), check: lockRE("lock.lock", "${ks}.employees.bharath")},
		{name: "acquire: not the holder", method: "GET", path: mb + "/locks/acquire/${lock2}", want: 400, keys: []string{"status", "lock", "message", "error"},
			fields: mF("status", "FAILURE", "lock.lock", "${lock2}", "message", "${lock2} is not a lock holder")},
		{name: "enquire", method: "GET", path: mb + "/locks/enquire/${ks}.employees.bharath", want: 200, keys: mLockOK,
			fields: mF("status", "SUCCESS", "lock.lock", "${ks}.employees.bharath", "lock.lock-holder", "${lock1}")},
		{name: "lock state", method: "GET", path: mb + "/locks/${ks}.employees.bharath", hdr: asMusicR, want: 200, fields: mF("lock.lock-holder", "${lock1}")},
		{name: "holders", method: "GET", path: mb + "/locks/holders/${ks}.employees.bharath", want: 200, keys: mLockOK,
			fields: mF("lock.lock", "${ks}.employees.bharath", "lock.lock-holder.0", "${lock1}"), check: jsonLen("lock.lock-holder", 1)},
		{name: "insert bharath (critical)", method: "POST", path: mEmp + "/rows", body: mInsertBharath, want: 200, keys: mOK, fields: mF("message", "Insert Successful")},
		{name: "insert (critical) by a lock id that does not hold", method: "POST", path: mEmp + "/rows",
			body: `{"values": {"emp_name": "bharath", "emp_salary": 1}, "consistencyInfo": {"type": "critical", "lockId": "${lock2}"}}`, want: 400, keys: mFail, fields: mF("status", "FAILURE"), errHas: "not holding"},
		{name: "update (critical) with conditions", method: "PUT", path: mEmp + "/rows?emp_name=bharath",
			body: `{"values": {"emp_salary": 1000}, "consistencyInfo": {"type": "critical", "lockId": "${lock1}"}, "conditions": {"emp_salary": 50}}`, want: 200,
			keys: mOK, fields: mF("message", "Update performed")},
		{name: "update (critical): condition not met", method: "PUT", path: mEmp + "/rows?emp_name=bharath",
			body: `{"values": {"emp_salary": 7}, "consistencyInfo": {"type": "critical", "lockId": "${lock1}"}, "conditions": {"emp_salary": 50}}`, want: 400, keys: mFail, errHas: "condition"},
		{name: "update (critical) without lockId", method: "PUT", path: mEmp + "/rows?emp_name=bharath", body: `{"values": {"emp_salary": 7}, "consistencyInfo": {"type": "critical"}}`, want: 400,
			keys: mFail, fields: mF("error", "LockId cannot be null. Create lock and acquire lock or use ATOMIC instead of CRITICAL")},
		{name: "update (critical) with a malformed lock id", method: "PUT", path: mEmp + "/rows?emp_name=bharath", body: `{"values": {"emp_salary": 7}, "consistencyInfo": {"type": "critical", "lockId": "garbage"}}`, want: 400,
			keys: mFail, errHas: "is not one this API issued"},
		{name: "create a lock on joe", method: "POST", path: mb + "/locks/create/${ks}.employees.joe", want: 200, save: itH("lockjoe", "lock.lock")},
		{name: "acquire the lock on joe", method: "GET", path: mb + "/locks/acquire/${lockjoe}", want: 200},
		{name: "update bharath (critical) with the lock of joe", method: "PUT", path: mEmp + "/rows?emp_name=bharath",
			body: `{"values": {"emp_salary": 7}, "consistencyInfo": {"type": "critical", "lockId": "${lockjoe}"}}`, want: 400, keys: mFail, errHas: "another key"},
		{name: "critical get (select with minor 1, patch 0)", method: "GET", path: mEmp + "/rows?emp_name=bharath", body: critical("${lock1}"), hdr: critGet, want: 200, keys: mRowsOK,
			fields: mF("status", "SUCCESS", "result.row 0.emp_name", "bharath", "result.row 0.emp_salary", 1000, "result.row 0.emp_id", "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6"),
			check:  itAll(headerIs(headerMusicMinor, "1"), headerIs(headerMusicPatch, "0"))},
		{name: "criticalget", method: "PUT", path: mEmp + "/rows/criticalget?emp_name=bharath", body: critical("${lock1}"), hdr: asMusicR, want: 200, keys: mRowsOK,
			fields: mF("result.row 0.emp_salary", 1000)},
		{name: "criticalget by a lock id that does not hold is refused", method: "PUT", path: mEmp + "/rows/criticalget?emp_name=bharath", body: critical("${lock2}"), want: 400,
			keys: mFail, fields: mF("status", "FAILURE"), errHas: "not holding"},
		{name: "criticalget: no row identifier", method: "PUT", path: mEmp + "/rows/criticalget", body: critical("${lock1}"), want: 400, fields: mF("error", musicParameterError)},
		{name: "criticalget: no consistency", method: "PUT", path: mEmp + "/rows/criticalget?emp_name=bharath", body: `{}`, want: 400, keys: mFail, errHas: "Missing Body or Consistency type"},
		{name: "criticalget (atomic) of a missing row", method: "PUT", path: mEmp + "/rows/criticalget?emp_name=nobody", body: `{"consistencyInfo": {"type": "atomic"}}`, want: 200,
			keys: mFail, fields: mF("status", "SUCCESS", "error", "No data found")},
		{name: "acquire with lease", method: "POST", path: mb + "/locks/acquire-with-lease/${lock1}", body: `{"leasePeriod": 6000}`, want: 200, keys: []string{"status", "lock", "message"},
			fields: mF("status", "SUCCESS", "lock.lock", "${lock1}", "lock.lock-lease", "6000")},
		{name: "acquire with lease: no lease", method: "POST", path: mb + "/locks/acquire-with-lease/${lock1}", body: `{"leasePeriod": 0}`, want: 400, keys: mFail, errHas: "leasePeriod"},
		{name: "release", method: "DELETE", path: mb + "/locks/release/${lock1}", want: 200, keys: mLockOK,
			fields: mF("status", "SUCCESS", "lock.lock", "${lock1}", "lock.lock-status", "UNLOCKED")},
		{name: "release again", method: "DELETE", path: mb + "/locks/release/${lock1}", want: 200, fields: mF("lock.lock-status", "UNLOCKED")},
		{name: "the second reference now holds", method: "GET", path: mb + "/locks/acquire/${lock2}", want: 200, fields: mF("status", "SUCCESS")},
		{name: "delete columns (critical)", method: "DELETE", path: mEmp + "/rows?emp_name=bharath", body: `{"columns": ["emp_salary"], "consistencyInfo": {"type": "critical", "lockId": "${lock2}"}}`, want: 200,
			keys: mOK, fields: mF("message", "Update performed")},
		{name: "select bharath after the column delete", method: "GET", path: mEmp + "/rows?emp_name=bharath", want: 200,
			fields: mF("result.row 0.emp_salary", nil, "result.row 0.emp_id", "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6")},
		{name: "delete lock by id (forced)", method: "DELETE", path: mb + "/locks/delete/${lock2}", want: 200, keys: []string{"status"}, fields: mF("status", "SUCCESS")},
		{name: "enquire: no holder", method: "GET", path: mb + "/locks/enquire/${ks}.employees.bharath", want: 400, keys: []string{"status", "error", "lock"},
			fields: mF("status", "FAILURE", "lock.lock", "${ks}.employees.bharath")},
		{name: "holders: none", method: "GET", path: mb + "/locks/holders/${ks}.employees.bharath", want: 400, fields: mF("error", "No lock holders for the key")},
		{name: "create a lock to delete by name", method: "POST", path: mb + "/locks/create/${ks}.employees.bharath", want: 200, save: itH("lock3", "lock.lock")},
		{name: "acquire it", method: "GET", path: mb + "/locks/acquire/${lock3}", want: 200},
		{name: "delete lock by name", method: "DELETE", path: mb + "/locks/delete/${ks}.employees.bharath", want: 200, keys: []string{"status"}},
		{name: "the deleted reference is gone", method: "GET", path: mb + "/locks/acquire/${lock3}", want: 400, keys: mFail},
		{name: "acquire: malformed lock id", method: "GET", path: mb + "/locks/acquire/garbage", want: 400, keys: mFail, errHas: "is not one this API issued"},
		{name: "acquire: lock id without a table", method: "GET", path: mb + "/locks/acquire/${d}${ks}${d}w-0123456789abcdef-0000000001", want: 400, keys: mFail, errHas: "is not one this API issued"},
		{name: "acquire: lock id of a missing table", method: "GET", path: mb + "/locks/acquire/${d}${ks}.nope.k${d}w-0123456789abcdef-0000000001", want: 400, keys: mFail},
		{name: "create lock: not keyspace.table.key", method: "POST", path: mb + "/locks/create/${ks}.employees", want: 400, keys: mFail, errHas: "Invalid lock"},
		{name: "create lock: composite key", method: "POST", path: mb + "/locks/create/${ks}.projects.p1", want: 400, keys: mFail, errHas: "composite primary key"},
		{name: "create lock: bad type", method: "POST", path: mb + "/locks/create/${ks}.employees.joe", body: `{"locktype": "SHARED"}`, want: 400, keys: mFail, errHas: "locktype"},
		{name: "release the lock on joe", method: "DELETE", path: mb + "/locks/release/${lockjoe}", want: 200},
		{name: "read lock 1", method: "POST", path: mb + "/locks/create/${ks}.employees.joe", body: `{"locktype": "READ"}`, hdr: asMusicR, want: 200, save: itH("read1", "lock.lock")},
		{name: "read lock 2", method: "POST", path: mb + "/locks/create/${ks}.employees.joe", body: `{"locktype": "READ"}`, hdr: asMusicR, want: 200, save: itH("read2", "lock.lock")},
		{name: "acquire read lock 1", method: "GET", path: mb + "/locks/acquire/${read1}", hdr: asMusicR, want: 200},
		{name: "acquire read lock 2", method: "GET", path: mb + "/locks/acquire/${read2}", hdr: asMusicR, want: 200},
		{name: "holders: two readers", method: "GET", path: mb + "/locks/holders/${ks}.employees.joe", want: 200,
			fields: mF("lock.lock-holder.0", "${read1}", "lock.lock-holder.1", "${read2}"), check: jsonLen("lock.lock-holder", 2)},
		{name: "critical get under the newest read lock", method: "PUT", path: mEmp + "/rows/criticalget?emp_name=joe", body: critical("${read2}"), hdr: asMusicR, want: 200,
			fields: mF("result.row 0.emp_salary", 40)},
		{name: "release read lock 1", method: "DELETE", path: mb + "/locks/release/${read1}", hdr: asMusicR, want: 200},
		{name: "release read lock 2", method: "DELETE", path: mb + "/locks/release/${read2}", hdr: asMusicR, want: 200},

		// ---- delete, select all, drop ----
		{name: "select all", method: "GET", path: mEmp + "/rows", want: 200, keys: mRowsOK, check: itAll(jsonIsEmptyObject("result.row 2"), func(t *testing.T, _ *itEnv, r itResp) {
			names := []string{fmt.Sprint(r.get("result.row 0.emp_name")), fmt.Sprint(r.get("result.row 1.emp_name"))}
			slices.Sort(names)
			if names[0] != "bharath" || names[1] != "joe" {
				t.Errorf("select all: rows %v, want bharath and joe", names)
			}
		})},
		{name: "delete joe (eventual)", method: "DELETE", path: mEmp + "/rows?emp_name=joe", body: `{"consistencyInfo": {"type": "eventual"}}`, want: 200,
			keys: mOK, fields: mF("message", "Eventual Operation Successfully performed")},
		{name: "select joe after the delete", method: "GET", path: mEmp + "/rows?emp_name=joe", want: 200, keys: mNoRows, fields: mF("error", "No data found")},
		{name: "delete: no body", method: "DELETE", path: mEmp + "/rows?emp_name=joe", want: 400, keys: mFail},
		{name: "delete: unknown column", method: "DELETE", path: mEmp + "/rows?emp_name=joe", body: `{"columns": ["nope"], "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, errHas: "nope"},
		{name: "delete bharath (atomic)", method: "DELETE", path: mEmp + "/rows?emp_name=bharath", body: `{"consistencyInfo": {"type": "atomic"}}`, want: 200, fields: mF("message", "Update performed")},

		// ---- conditional (compare-and-set) ----
		{name: "create the plans table", method: "POST", path: mks + "/tables/plans", body: `{"fields": {"id": "text", "name": "varchar", "plans": "text", "PRIMARY KEY": "(id)"}}`, want: 200},
		{name: "conditional insert: no row", method: "POST", path: mb + "/conditional/insert/keyspaces/${ks}/tables/plans", body: mPlanInsert, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Insert values: ")},
		{name: "select the plan", method: "GET", path: mks + "/tables/plans/rows?id=p1", want: 200,
			fields: mF("result.row 0.name", "first", "result.row 0.plans", `{"plan1":{"state":"new","status":"created"}}`)},
		{name: "conditional insert: the row exists", method: "POST", path: mb + "/conditional/insert/keyspaces/${ks}/tables/plans", body: mPlanInsert, want: 200,
			keys: mOK, fields: mF("message", `Update values: {"plan1":{"state":"new","status":"updated"}}`)},
		{name: "conditional update", method: "PUT", path: mb + "/conditional/update/keyspaces/${ks}/tables/plans", body: mPlanUpdate, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "update success")},
		{name: "select the updated plan", method: "GET", path: mks + "/tables/plans/rows?id=p1", want: 200,
			fields: mF("result.row 0.name", "second", "result.row 0.plans", `{"plan1":{"state":"done","status":"updated"}}`)},
		{name: "conditional update: no row", method: "PUT", path: mb + "/conditional/update/keyspaces/${ks}/tables/plans", body: strings.Replace(mPlanUpdate, `"p1"`, `"p2"`, 1), want: 400,
			keys: mFail, fields: mF("error", "Cannot find data related to key: id")},
		{name: "conditional insert: missing values", method: "POST", path: mb + "/conditional/insert/keyspaces/${ks}/tables/plans", body: `{"primaryKey": "id", "primaryKeyValue": "p1"}`, want: 400,
			keys: mFail, errHas: "One or more input values missing"},
		{name: "conditional insert: cascade column not text", method: "POST", path: mb + "/conditional/insert/keyspaces/${ks}/tables/employees",
			body: strings.NewReplacer(`"id"`, `"emp_name"`, `"plans"`, `"emp_salary"`).Replace(mPlanInsert), want: 400, keys: mFail, errHas: "casscadeColumnName"},

		// ---- priorityq (musicQ), with the bodies of MUSIC's TestRestMusicQAPI ----
		{name: "pq: create", method: "POST", path: mPQ, body: mPQTable, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "TableName employees Created under keyspace ${ks}")},
		{name: "pq: create again", method: "POST", path: mPQ, body: mPQTable, want: 400, keys: mFail, errHas: "exists"},
		{name: "pq: create by the reader", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/q2", body: mPQTable, hdr: asMusicR, want: 401, keys: mFail},
		{name: "pq: create, fields empty", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/q2",
			body: `{"fields": {}, "primaryKey": "emp_name", "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, fields: mF("error", "CreateQ/Required table fields are empty or not set")},
		{name: "pq: create, no clustering key", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/q2",
			body: `{"fields": {"uuid": "text", "emp_name": "text", "emp_id": "text", "emp_salary": "varint"}, "partitionKey": "emp_name", "clusteringOrder": "emp_id DESC", "consistencyInfo": {"type": "eventual"}}`,
			want: 400, keys: mFail, errHas: "CreateQ: Clustering key cannot be empty"},
		{name: "pq: create, no clustering order", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/q2",
			body: `{"fields": {"uuid": "text", "emp_name": "text", "emp_salary": "varint"}, "partitionKey": "emp_name", "clusteringKey": "emp_salary"}`,
			want: 400, keys: mFail, fields: mF("error", "CreateQ: Clustering Order cannot be empty")},
		{name: "pq: create, bad clustering order", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/q2",
			body: `{"fields": {"uuid": "text", "emp_name": "text", "emp_id": "text", "emp_salary": "varint", "PRIMARY KEY": "(emp_name,emp_id)"}, "primaryKey": "emp_name,emp_id", "clusteringOrder": "emp_id DESCx", "consistencyInfo": {"type": "eventual"}}`,
			want: 400, keys: mFail, errHas: "clusteringOrder"},
		{name: "pq: create, a text priority", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/q2",
			body: `{"fields": {"uuid": "text", "emp_name": "text", "emp_salary": "varint"}, "partitionKey": "emp_name", "clusteringKey": "uuid", "clusteringOrder": "uuid ASC", "consistencyInfo": {"type": "eventual"}}`,
			want: 400, keys: mFail, errHas: "must be int, bigint or varint"},
		{name: "pq: nothing was created by the refusals", method: "GET", path: mb + "/priorityq/keyspaces/${ks}/q2/filter", want: 400, keys: mFail, errHas: "not found"},
		{name: "pq: insert, priority out of range (MUSIC's salary 500)", method: "POST", path: mPQ + "/rows", body: mPQInsert500, want: 400, keys: mFail, errHas: "emp_salary: the priority column's values must be integers 0-15"},
		{name: "pq: insert, negative priority", method: "POST", path: mPQ + "/rows", body: strings.Replace(mPQInsert500, "500", "-1", 1), want: 400, keys: mFail, errHas: "0-15"},
		{name: "pq: insert, values empty", method: "POST", path: mPQ + "/rows", body: `{"values": {}, "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, errHas: "Required HTTP Request body is missing"},
		{name: "pq: insert, malformed body", method: "POST", path: mPQ + "/rows", body: `{"values": `, want: 400, keys: mFail, errHas: "JSON"},
		{name: "pq: insert, no consistencyInfo", method: "POST", path: mPQ + "/rows", body: `{"values": {"emp_name": "x", "emp_salary": 1}}`, want: 400, keys: mFail, errHas: "consistencyInfo.type is missing"},
		{name: "pq: insert, critical", method: "POST", path: mPQ + "/rows", body: `{"values": {"emp_name": "x", "emp_salary": 1}, "consistencyInfo": {"type": "critical", "lockId": "x"}}`, want: 400, keys: mFail, errHas: "critical"},
		{name: "pq: insert, no key", method: "POST", path: mPQ + "/rows", body: `{"values": {"uuid": "u"}, "consistencyInfo": {"type": "eventual"}}`, want: 400, keys: mFail, errHas: "primary key"},
		{name: "pq: insert into an unknown queue", method: "POST", path: mb + "/priorityq/keyspaces/${ks}/nope/rows", body: mPQInsert(5, "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "testName"), want: 400, keys: mFail, errHas: "not found"},
		{name: "pq: insert by the reader", method: "POST", path: mPQ + "/rows", body: mPQInsert(5, "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "testName"), hdr: asMusicR, want: 401, keys: mFail},
		{name: "pq: the refused inserts changed nothing", method: "GET", path: mPQ + "/filter", want: 200, keys: mNoRows, fields: mF("error", "No data found"), check: jsonIsEmptyObject("result")},
		{name: "pq: peek of an empty queue", method: "GET", path: mPQ + "/peek", want: 200, keys: mRowsOK, check: jsonIsEmptyObject("result")},
		{name: "pq: insert testName/5", method: "POST", path: mPQ + "/rows", body: mPQInsert(5, "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "testName"), want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Insert Successful")},
		{name: "pq: insert testName/9", method: "POST", path: mPQ + "/rows", body: mPQInsert(9, "abc66ccc-d857-4e90-b1e5-df98a3d40ce6", "testName"), want: 200, keys: mOK, fields: mF("message", "Insert Successful")},
		{name: "pq: insert test1/12 (atomic)", method: "POST", path: mPQ + "/rows",
			body: `{"values": {"uuid": "bbc66ccc-d857-4e90-b1e5-df98a3d40de6", "emp_name": "test1", "emp_salary": 12}, "consistencyInfo": {"type": "atomic"}}`, want: 200, keys: mOK, fields: mF("message", "Insert Successful")},
		{name: "pq: peek (the highest salary first: DESC)", method: "GET", path: mPQ + "/peek", hdr: asMusicR, want: 200, keys: mRowsOK,
			fields: mF("status", "SUCCESS", "result.row 0.emp_name", "test1", "result.row 0.emp_salary", 12, "result.row 0.uuid", "bbc66ccc-d857-4e90-b1e5-df98a3d40de6", "result.row 1", mAbsent)},
		{name: "pq: peek by partition key", method: "GET", path: mPQ + "/peek?emp_name=testName", want: 200, keys: mRowsOK,
			fields: mF("result.row 0.emp_name", "testName", "result.row 0.emp_salary", 9, "result.row 0.uuid", "abc66ccc-d857-4e90-b1e5-df98a3d40ce6", "result.row 1", mAbsent)},
		{name: "pq: filter (MUSIC's example)", method: "GET", path: mPQ + "/filter?emp_name=testName&uuid=cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", hdr: asMusicR, want: 200, keys: mRowsOK,
			fields: mF("status", "SUCCESS", "result.row 0.emp_name", "testName", "result.row 0.emp_salary", 5, "result.row 0.uuid", "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 1", mAbsent)},
		{name: "pq: filter by partition key (in priority order)", method: "GET", path: mPQ + "/filter?emp_name=testName", want: 200, keys: mRowsOK,
			fields: mF("result.row 0.emp_salary", 9, "result.row 1.emp_salary", 5, "result.row 1.uuid", "cfd66ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 2", mAbsent)},
		{name: "pq: filter by the whole key", method: "GET", path: mPQ + "/filter?emp_name=testName&emp_salary=9", want: 200, keys: mRowsOK,
			fields: mF("result.row 0.uuid", "abc66ccc-d857-4e90-b1e5-df98a3d40ce6", "result.row 1", mAbsent)},
		{name: "pq: filter, nothing found", method: "GET", path: mPQ + "/filter?emp_name=nobody", want: 200, keys: mNoRows,
			fields: mF("status", "SUCCESS", "error", "No data found"), check: jsonIsEmptyObject("result")},
		{name: "pq: filter, unknown column", method: "GET", path: mPQ + "/filter?salary=1", want: 400, keys: mFail, errHas: "salary"},
		{name: "pq: filter, a value of the wrong type", method: "GET", path: mPQ + "/filter?emp_salary=lots", want: 400, keys: mFail},
		{name: "pq: update (atomic)", method: "PUT", path: mPQ + "/rows?emp_name=testName&emp_salary=5",
			body: `{"values": {"uuid": "dd066ccc-d857-4e90-b1e5-df98a3d40cd6"}, "consistencyInfo": {"type": "atomic"}}`, want: 200, keys: mOK, fields: mF("status", "SUCCESS", "message", "Update performed")},
		{name: "pq: update (eventual)", method: "PUT", path: mPQ + "/rows?emp_name=testName&emp_salary=9",
			body: `{"values": {"uuid": "ee066ccc-d857-4e90-b1e5-df98a3d40cd6"}, "consistencyInfo": {"type": "eventual"}}`, want: 200, keys: mOK, fields: mF("message", "Eventual Operation Successfully performed")},
		{name: "pq: filter after the updates", method: "GET", path: mPQ + "/filter?emp_name=testName", want: 200,
			fields: mF("result.row 0.uuid", "ee066ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 0.emp_salary", 9, "result.row 1.uuid", "dd066ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 1.emp_salary", 5)},
		{name: "pq: update the priority (MUSIC's example body)", method: "PUT", path: mPQ + "/rows?emp_name=testName&emp_salary=5",
			body: `{"values": {"emp_salary": "2500"}, "consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail, errHas: "priority column"},
		{name: "pq: update, values empty", method: "PUT", path: mPQ + "/rows?emp_name=testName&emp_salary=5", body: `{"values": {}, "consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail},
		{name: "pq: update, no row identifier", method: "PUT", path: mPQ + "/rows", body: `{"values": {"uuid": "x"}, "consistencyInfo": {"type": "atomic"}}`, want: 400,
			keys: mFail, fields: mF("error", musicParameterError)},
		{name: "pq: update, part of the key", method: "PUT", path: mPQ + "/rows?emp_name=testName", body: `{"values": {"uuid": "x"}, "consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail, errHas: "emp_salary is missing"},
		{name: "pq: update, conditions", method: "PUT", path: mPQ + "/rows?emp_name=testName&emp_salary=5", body: `{"values": {"uuid": "x"}, "consistencyInfo": {"type": "atomic"}, "conditions": {"uuid": "y"}}`, want: 400, keys: mFail, errHas: "conditions"},
		{name: "pq: the refused updates changed nothing", method: "GET", path: mPQ + "/filter?emp_name=testName&emp_salary=5", want: 200,
			fields: mF("result.row 0.uuid", "dd066ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 1", mAbsent)},
		{name: "pq: a /v1 worker claims the top row", action: func(t *testing.T, e *itEnv) {
			r := e.do(t, e.base, "POST", e.expand(t, "/v1/queues/${ks}/employees/claim"), `{"worker":"w1","lease":"1m"}`, map[string]string{"Authorization": "Bearer " + itWriterToken})
			if r.status != 200 || r.get("payload.emp_name") != "test1" || fmt.Sprint(r.get("priority")) != "12" {
				t.Fatalf("claim: %d %s, want test1 at level 12", r.status, trunc(r.body))
			}
			e.vars["pqid"], e.vars["pqtok"] = r.get("id").(string), r.get("token").(string)
		}},
		{name: "pq: peek skips the claimed row", method: "GET", path: mPQ + "/peek", want: 200, fields: mF("result.row 0.emp_name", "testName", "result.row 0.emp_salary", 9)},
		{name: "pq: update of the claimed row", method: "PUT", path: mPQ + "/rows?emp_name=test1&emp_salary=12", body: `{"values": {"uuid": "x"}, "consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail, errHas: "being processed by a worker"},
		{name: "pq: insert over the claimed row", method: "POST", path: mPQ + "/rows", body: mPQInsert(12, "x", "test1"), want: 400, keys: mFail, errHas: "being processed by a worker"},
		{name: "pq: delete of the claimed row", method: "DELETE", path: mPQ + "/rows?emp_name=test1&emp_salary=12", body: `{"consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail, errHas: "being processed by a worker"},
		{name: "pq: the claimed row is unchanged", method: "GET", path: mPQ + "/filter?emp_name=test1", want: 200,
			fields: mF("result.row 0.uuid", "bbc66ccc-d857-4e90-b1e5-df98a3d40de6", "result.row 0.emp_salary", 12, "result.row 1", mAbsent)},
		{name: "pq: the worker completes it", action: func(t *testing.T, e *itEnv) {
			r := e.do(t, e.base, "POST", e.expand(t, "/v1/queues/${ks}/employees/jobs/${pqid}/complete"), e.expand(t, `{"token":"${pqtok}"}`), map[string]string{"Authorization": "Bearer " + itWriterToken})
			if r.status != 204 {
				t.Fatalf("complete: %d %s", r.status, trunc(r.body))
			}
		}},
		{name: "pq: the completed row is gone", method: "GET", path: mPQ + "/filter?emp_name=test1", want: 200, keys: mNoRows, fields: mF("error", "No data found")},
		{name: "pq: delete (atomic)", method: "DELETE", path: mPQ + "/rows?emp_name=testName&emp_salary=9", body: `{"consistencyInfo": {"type": "atomic"}}`, want: 200,
			keys: mOK, fields: mF("status", "SUCCESS", "message", "Update performed")},
		{name: "pq: delete a missing row (as CQL: success)", method: "DELETE", path: mPQ + "/rows?emp_name=testName&emp_salary=9", body: `{"consistencyInfo": {"type": "eventual"}}`, want: 200,
			keys: mOK, fields: mF("message", "Eventual Operation Successfully performed")},
		{name: "pq: delete, no body", method: "DELETE", path: mPQ + "/rows?emp_name=test1", want: 400, keys: mFail},
		{name: "pq: delete, part of the key (MUSIC's example)", method: "DELETE", path: mPQ + "/rows?emp_name=test1", body: `{"consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail, errHas: "emp_salary is missing"},
		{name: "pq: delete, columns", method: "DELETE", path: mPQ + "/rows?emp_name=testName&emp_salary=5", body: `{"columns": ["uuid"], "consistencyInfo": {"type": "atomic"}}`, want: 400, keys: mFail, errHas: "columns"},
		{name: "pq: insert an existing key (upsert)", method: "POST", path: mPQ + "/rows", body: mPQInsert(5, "ff066ccc-d857-4e90-b1e5-df98a3d40cd6", "testName"), want: 200, fields: mF("message", "Insert Successful")},
		{name: "pq: filter every row", method: "GET", path: mPQ + "/filter", want: 200, keys: mRowsOK,
			fields: mF("result.row 0.emp_name", "testName", "result.row 0.emp_salary", 5, "result.row 0.uuid", "ff066ccc-d857-4e90-b1e5-df98a3d40cd6", "result.row 1", mAbsent)},
		{name: "pq: a /v1 queue is not a priorityq", action: func(t *testing.T, e *itEnv) {
			r := e.do(t, e.base, "POST", e.expand(t, "/v1/queues/${ks}"), `{"name":"plain"}`, map[string]string{"Authorization": "Bearer " + itWriterToken})
			if r.status != 201 {
				t.Fatalf("create a /v1 queue: %d %s", r.status, trunc(r.body))
			}
		}},
		{name: "pq: peek of a /v1 queue", method: "GET", path: mb + "/priorityq/keyspaces/${ks}/plain/peek", want: 400, keys: mFail, errHas: "not a priorityq queue"},
		{name: "pq: drop", method: "DELETE", path: mPQ, want: 200, keys: []string{"status"}, fields: mF("status", "SUCCESS")},
		{name: "pq: drop again", method: "DELETE", path: mPQ, want: 400, keys: mFail},
		{name: "pq: peek of a dropped queue", method: "GET", path: mPQ + "/peek", want: 400, keys: mFail},

		{name: "drop table", method: "DELETE", path: mks + "/tables/projects", body: `{"consistencyInfo": {"type": "eventual"}}`, want: 200, keys: []string{"status"}, fields: mF("status", "SUCCESS")},
		{name: "drop table again", method: "DELETE", path: mks + "/tables/projects", want: 400, keys: mFail},

		// ---- a dependency goes down ----
		{name: "take a dependency away", action: func(t *testing.T, e *itEnv) { e.down(t) }},
		{name: "down: ping", only: "distributed", method: "GET", path: mb + "/service/pingCassandra/QUORUM", want: 503,
			keys: []string{"status", "message", "INACTIVE"}, fields: mF("status", "INACTIVE")},
		{name: "down: health check", only: "distributed", method: "GET", path: mb + "/service/musicHealthCheck", want: 200, fields: mF("MUSIC", "Active", "Cassandra", "Inactive")},
		{name: "down: atomic update", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": {"emp_salary": 1}, "consistencyInfo": {"type": "atomic"}}`, want: 503, keys: mFail, fields: mF("status", "FAILURE")},
		{name: "down: a client's mistake is still 400", method: "PUT", path: mEmp + "/rows?emp_name=joe", body: `{"values": `, want: 400, keys: mFail},
	}
}

// jsonIsEmptyObject checks that path is {} (or, for a row past the last, absent).
func jsonIsEmptyObject(path string) itCheck {
	return func(t *testing.T, _ *itEnv, r itResp) {
		t.Helper()
		v := r.get(path)
		if m, ok := v.(map[string]any); v != nil && (!ok || len(m) != 0) {
			t.Errorf("%s = %v, want {} (body %s)", path, v, trunc(r.body))
		}
	}
}

// runMusic runs the scenario's steps in order.
func (e *itEnv) runMusic(t *testing.T, steps []mStep) {
	e.vars["d"] = "$" // a literal $ in paths
	names := map[string]bool{}
	for _, st := range steps {
		if names[st.name] {
			t.Fatalf("two steps named %q", st.name)
		}
		names[st.name] = true
		if st.only != "" && st.only != e.mode {
			continue
		}
		if st.action != nil {
			st.action(t, e)
			continue
		}
		hdr := map[string]string{"Authorization": basic("writer", itWriterToken)}
		for k, v := range st.hdr {
			hdr[k] = e.expand(t, v)
		}
		r := e.do(t, e.base, st.method, e.expand(t, st.path), e.expand(t, st.body), hdr)
		e.verifyMusic(t, st, hdr, r)
	}
}

// verifyMusic checks one answer: status code, JSON content type, MUSIC's version headers,
// the members, fields and error of the step, then saves its variables and runs its check.
func (e *itEnv) verifyMusic(t *testing.T, st mStep, hdr map[string]string, r itResp) {
	t.Helper()
	if r.req == nil {
		t.Errorf("%s: no response", st.name)
		return
	}
	what := st.name + " (" + r.req.Method + " " + r.req.URL.RequestURI() + ")"
	if r.status != st.want {
		t.Errorf("%s: got %d %s, want %d", what, r.status, trunc(r.body), st.want)
		return
	}
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
	minor, patch := hdr[headerMusicMinor], hdr[headerMusicPatch]
	if minor == "" {
		minor = musicMinor
	}
	if patch == "" {
		patch = musicPatch
	}
	if r.hdr.Get(headerMusicLatest) != "3.2.40" || r.hdr.Get(headerMusicMinor) != minor || r.hdr.Get(headerMusicPatch) != patch {
		t.Errorf("%s: version headers latest %q minor %q patch %q, want 3.2.40 %s %s", what,
			r.hdr.Get(headerMusicLatest), r.hdr.Get(headerMusicMinor), r.hdr.Get(headerMusicPatch), minor, patch)
	}
	obj, _ := r.json.(map[string]any)
	if st.keys != nil {
		var got []string
		for k := range obj {
			got = append(got, k)
		}
		want := slices.Clone(st.keys)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: members %v, want %v (body %s)", what, got, want, trunc(r.body))
		}
	}
	if r.status >= 400 && obj["status"] == "FAILURE" && obj["error"] == nil {
		t.Errorf("%s: a failure without an error: %s", what, trunc(r.body))
	}
	for path, want := range st.fields {
		got, present := jsonLookup(r.json, path)
		switch {
		case want == mAbsent:
			if present {
				t.Errorf("%s: %s = %v, want it absent", what, path, got)
			}
		case want == nil:
			if !present || got != nil {
				t.Errorf("%s: %s = %v (present %v), want null", what, path, got, present)
			}
		default:
			w := fmt.Sprint(want)
			if s, ok := want.(string); ok {
				w = e.expand(t, s)
			}
			if !present || fmt.Sprint(got) != w {
				t.Errorf("%s: %s = %v, want %s (body %s)", what, path, got, w, trunc(r.body))
			}
		}
	}
	if st.errHas != "" {
		if s, _ := obj["error"].(string); !strings.Contains(s, e.expand(t, st.errHas)) {
			t.Errorf("%s: error %q, want it to contain %q", what, s, st.errHas)
		}
	}
	for name, path := range st.save {
		v, _ := r.get(path).(string)
		if v == "" {
			t.Errorf("%s: nothing to save as %s from %s", what, name, path)
		}
		e.vars[name] = v
	}
	if st.check != nil {
		st.check(t, e, r)
	}
}

// jsonLookup is jsonGet that tells a null member from a missing one.
func jsonLookup(v any, path string) (any, bool) {
	for _, k := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[k]; !ok {
				return nil, false
			}
		case []any:
			v = jsonGet(x, k)
			if v == nil {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	return v, true
}

// verifyMusicCoverage checks that every v2 route was called, and that no answer was a 500.
func (e *itEnv) verifyMusicCoverage(t *testing.T) {
	hit := map[string]bool{}
	for _, rec := range e.records() {
		if rec.status >= 500 && rec.status != http.StatusServiceUnavailable {
			t.Errorf("%s %s answered %d", rec.method, rec.path, rec.status)
		}
		hit[e.pattern(rec.method, rec.path)] = true
	}
	for _, p := range e.srv.musicPatterns {
		if !hit[p] {
			t.Errorf("route %s was never called", p)
		}
	}
	if logs := e.logs.String(); strings.Contains(logs, "a bug") {
		t.Errorf("the server logged a bug:\n%s", logs)
	}
}

// docs/music-v2.md lists every route of the v2 layer (the OpenAPI document describes the native
// API only: TestOpenAPIMatchesRoutes compares it with Server.patterns, which hold no v2 route).
func TestMusicV2DocListsRoutes(t *testing.T) {
	doc, err := os.ReadFile("../docs/music-v2.md")
	if err != nil {
		t.Fatal(err)
	}
	s := newV1Env(t).s
	for _, p := range s.musicPatterns {
		method, path, _ := strings.Cut(p, " ")
		line := "`" + method + " " + strings.TrimPrefix(path, musicBase) + "`"
		if !strings.Contains(string(doc), line) {
			t.Errorf("docs/music-v2.md does not list %s", line)
		}
		if slices.Contains(s.patterns, p) {
			t.Errorf("%s is among the native patterns", p)
		}
	}
}
