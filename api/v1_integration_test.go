package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/ownership"
	"github.com/musicd/musicd/policies"
	"github.com/musicd/musicd/state"
	"github.com/musicd/musicd/state/queue"
)

// TestV1Integration runs one table-driven scenario over real HTTP (a listener, net/http's
// client) against an api.Server backed by a real *state.Service, in embedded mode (Pebble
// backend, embedded journal, in-process locks) and in distributed mode (Cassandra journal and
// backend, ZooKeeper locks). It covers every /v1 route, each consistency (eventual, critical
// with Music-Lock, atomic with wait), compare-and-set, and each error code of errorTable, and
// asserts that no response of the whole scenario was a 500 (nor logged as a bug).
func TestV1Integration(t *testing.T) {
	for _, mode := range []string{"embedded", "distributed"} {
		t.Run(mode, func(t *testing.T) {
			start := time.Now()
			var e *itEnv
			if mode == "embedded" {
				e = newEmbeddedIT(t)
			} else {
				e = newDistributedIT(t)
			}
			setup := time.Since(start)
			e.run(t, itScenario())
			e.verifyCoverage(t)
			t.Logf("%s: setup %s, scenario %s (%d requests)", mode, setup.Round(time.Millisecond),
				(time.Since(start) - setup).Round(time.Millisecond), len(e.records()))
		})
	}
}

// Tokens of the scenario: a writer of every keyspace and a reader of the scenario's keyspace.
const (
	itWriterToken = "it-writer-0123456789abcdef"
	itReaderToken = "it-reader-0123456789abcdef"
	itMaxBody     = 8 << 10
)

// ---- the scenario ----

// itStep is one step of the scenario: a request and what its response must be, or an action.
// Strings are expanded with the scenario's variables (${name}: ks, ks2, the refs, ETags and
// tokens saved by earlier steps).
type itStep struct {
	name string
	// only restricts the step to one mode ("embedded", "distributed").
	only string
	// action, when set, is run instead of a request.
	action func(t *testing.T, e *itEnv)
	// server "twin" sends the request to the second daemon (see itEnv.startTwin).
	server             string
	method, path, body string
	// hdr are request headers. Authorization defaults to the writer's token; "" removes it. X-Request-Id
	// defaults to a fresh valid id.
	hdr map[string]string
	// bg starts the request in the background under this name; the step whose join names it
	// checks its response.
	bg, join string
	want     int
	code     string // the error code of an error response
	// save stores response values in variables: "header:ETag", "json:ref" (a dotted JSON path).
	save  map[string]string
	check func(t *testing.T, e *itEnv, r itResp)
}

func itH(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

var (
	asReader = itH("Authorization", "Bearer ${reader}")
	noToken  = itH("Authorization", "")
)

const (
	itRows  = "/v1/keyspaces/${ks}/tables/events/rows"
	itLocks = "/v1/keyspaces/${ks}/tables/events/locks"
	// itQueues holds the scenario's queues.
	itQueues = "/v1/queues/${ks}"
	// itTable is the scenario's table: a partition key, a clustering column and a regular column
	// of most types.
	itTable = `{"name":"events","columns":[{"name":"owner","type":"text"},{"name":"seq","type":"int"},` +
		`{"name":"note","type":"text"},{"name":"n","type":"bigint"},{"name":"score","type":"double"},` +
		`{"name":"ok","type":"boolean"},{"name":"data","type":"blob"}],"partition_key":["owner"],"clustering":["seq"]}`
)

func itScenario() []itStep {
	return []itStep{
		// ---- the OpenAPI document, authentication, unknown endpoints ----
		{name: "openapi", method: "GET", path: "/v1/openapi.json", want: 200, check: func(t *testing.T, _ *itEnv, r itResp) {
			if v, _ := r.get("openapi").(string); !strings.HasPrefix(v, "3.") {
				t.Errorf("openapi: %v", r.get("openapi"))
			}
			if r.get("paths./v1/keyspaces/{ks}/tables/{table}/rows/{key}") == nil {
				t.Errorf("openapi: no row path in %s", trunc(r.body))
			}
		}},
		{name: "openapi by the reader", method: "GET", path: "/v1/openapi.json", hdr: asReader, want: 200},
		{name: "openapi without a token", method: "GET", path: "/v1/openapi.json", hdr: noToken, want: 401, code: codeUnauthenticated,
			check: headerHas("WWW-Authenticate", `Bearer realm="musicd"`)},
		{name: "unknown token", method: "GET", path: "/v1/keyspaces", hdr: itH("Authorization", "Bearer it-nobody-0123456789abcdef"), want: 401, code: codeUnauthenticated,
			check: headerHas("WWW-Authenticate", `error="invalid_token"`)},
		{name: "basic scheme", method: "GET", path: "/v1/keyspaces", hdr: itH("Authorization", "Basic YTpi"), want: 401, code: codeUnauthenticated},
		{name: "method not allowed", method: "PATCH", path: "/v1/keyspaces", want: 405, code: codeMethodNotAllowed, check: headerHas("Allow", "GET, POST")},
		{name: "no such endpoint", method: "GET", path: "/v1/nothing", want: 404, code: codeNotFound},
		{name: "bad request id", method: "GET", path: "/v1/keyspaces", hdr: itH("X-Request-Id", "not valid!"), want: 400, code: codeInvalid},

		// ---- keyspaces ----
		{name: "create keyspace", method: "POST", path: "/v1/keyspaces", body: `{"name":"${ks}"}`, want: 201,
			check: itAll(headerIs("Location", "/v1/keyspaces/${ks}"), jsonIs("name", "${ks}"))},
		{name: "create keyspace again", method: "POST", path: "/v1/keyspaces", body: `{"name":"${ks}"}`, want: 409, code: codeExists},
		{name: "create a second keyspace", method: "POST", path: "/v1/keyspaces", body: `{"name":"${ks2}"}`, want: 201},
		{name: "create keyspace by the reader", method: "POST", path: "/v1/keyspaces", body: `{"name":"${ks}"}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "create keyspace: bad identifier", method: "POST", path: "/v1/keyspaces", body: `{"name":"Bad-Name"}`, want: 400, code: codeInvalid},
		{name: "create keyspace: reserved name", method: "POST", path: "/v1/keyspaces", body: `{"name":"music_x"}`, want: 400, code: codeInvalid},
		{name: "create keyspace: bad JSON", method: "POST", path: "/v1/keyspaces", body: `{"name":`, want: 400, code: codeInvalid},
		{name: "create keyspace: value of the wrong type", method: "POST", path: "/v1/keyspaces", body: `{"name":"x","replication":"three"}`, want: 400, code: codeInvalid},
		{name: "create keyspace: unknown field", method: "POST", path: "/v1/keyspaces", body: `{"name":"x","owner":"me"}`, want: 400, code: codeInvalid},
		{name: "create keyspace: no body", method: "POST", path: "/v1/keyspaces", want: 400, code: codeInvalid},
		{name: "create keyspace: body too large", method: "POST", path: "/v1/keyspaces", body: `{"name":"` + strings.Repeat("k", itMaxBody) + `"}`, want: 413, code: codeBodyTooLarge},
		{name: "list keyspaces", method: "GET", path: "/v1/keyspaces", want: 200, check: namesAre("keyspaces", "${ks}", "${ks2}")},
		{name: "list keyspaces by the reader", method: "GET", path: "/v1/keyspaces", hdr: asReader, want: 200, check: namesAre("keyspaces", "${ks}")},
		{name: "get keyspace", method: "GET", path: "/v1/keyspaces/${ks}", hdr: asReader, want: 200, check: jsonIs("name", "${ks}")},
		{name: "get keyspace: not the reader's", method: "GET", path: "/v1/keyspaces/${ks2}", hdr: asReader, want: 403, code: codeForbidden},
		{name: "get keyspace: missing", method: "GET", path: "/v1/keyspaces/${ks}x", want: 404, code: codeNotFound},
		{name: "get keyspace: bad identifier", method: "GET", path: "/v1/keyspaces/Bad", want: 400, code: codeInvalid},
		{name: "drop keyspace by the reader", method: "DELETE", path: "/v1/keyspaces/${ks}", hdr: asReader, want: 403, code: codeForbidden},
		{name: "drop keyspace", method: "DELETE", path: "/v1/keyspaces/${ks2}", want: 204},
		{name: "get dropped keyspace", method: "GET", path: "/v1/keyspaces/${ks2}", want: 404, code: codeNotFound},
		{name: "drop dropped keyspace", method: "DELETE", path: "/v1/keyspaces/${ks2}", want: 404, code: codeNotFound},

		// ---- tables ----
		{name: "create table", method: "POST", path: "/v1/keyspaces/${ks}/tables", body: itTable, want: 201,
			check: itAll(headerIs("Location", "/v1/keyspaces/${ks}/tables/events"), jsonIs("keyspace", "${ks}"), jsonIs("clustering.0", "seq"))},
		{name: "create table again", method: "POST", path: "/v1/keyspaces/${ks}/tables", body: itTable, want: 409, code: codeExists},
		{name: "create table by the reader", method: "POST", path: "/v1/keyspaces/${ks}/tables", body: itTable, hdr: asReader, want: 403, code: codeForbidden},
		{name: "create table in a missing keyspace", method: "POST", path: "/v1/keyspaces/${ks}x/tables", body: itTable, want: 404, code: codeNotFound},
		{name: "create table: unknown column type", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"name":"t2","columns":[{"name":"id","type":"varchar"},{"name":"v","type":"text"}],"partition_key":["id"]}`, want: 400, code: codeInvalid},
		{name: "create table: key of an unknown column", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"name":"t2","columns":[{"name":"id","type":"text"},{"name":"v","type":"text"}],"partition_key":["nope"]}`, want: 400, code: codeInvalid},
		{name: "create table: bad identifier", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"name":"2t","columns":[{"name":"id","type":"text"},{"name":"v","type":"text"}],"partition_key":["id"]}`, want: 400, code: codeInvalid},
		{name: "create table: another keyspace in the body", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"keyspace":"${ks2}","name":"t2","columns":[{"name":"id","type":"text"},{"name":"v","type":"text"}],"partition_key":["id"]}`, want: 400, code: codeInvalid},
		{name: "create table: columns of the wrong type", method: "POST", path: "/v1/keyspaces/${ks}/tables", body: `{"name":"t2","columns":"id"}`, want: 400, code: codeInvalid},
		{name: "create scratch table", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"name":"scratch","columns":[{"name":"id","type":"text"},{"name":"v","type":"int"}],"partition_key":["id"]}`, want: 201},
		{name: "list tables", method: "GET", path: "/v1/keyspaces/${ks}/tables", hdr: asReader, want: 200, check: namesAre("tables", "events", "scratch")},
		{name: "list tables of a missing keyspace", method: "GET", path: "/v1/keyspaces/${ks}x/tables", want: 404, code: codeNotFound},
		{name: "list tables: not the reader's", method: "GET", path: "/v1/keyspaces/${ks2}/tables", hdr: asReader, want: 403, code: codeForbidden},
		{name: "get table", method: "GET", path: "/v1/keyspaces/${ks}/tables/events", hdr: asReader, want: 200,
			check: itAll(jsonIs("name", "events"), jsonIs("columns.6.type", "blob"), jsonIs("partition_key.0", "owner"))},
		{name: "get missing table", method: "GET", path: "/v1/keyspaces/${ks}/tables/nope", want: 404, code: codeNotFound},
		{name: "get table: bad identifier", method: "GET", path: "/v1/keyspaces/${ks}/tables/No", want: 400, code: codeInvalid},
		{name: "drop table by the reader", method: "DELETE", path: "/v1/keyspaces/${ks}/tables/scratch", hdr: asReader, want: 403, code: codeForbidden},
		{name: "drop table", method: "DELETE", path: "/v1/keyspaces/${ks}/tables/scratch", want: 204},
		{name: "get dropped table", method: "GET", path: "/v1/keyspaces/${ks}/tables/scratch", want: 404, code: codeNotFound},
		{name: "drop dropped table", method: "DELETE", path: "/v1/keyspaces/${ks}/tables/scratch", want: 404, code: codeNotFound},

		// ---- rows, eventual ----
		{name: "insert (eventual)", method: "POST", path: itRows,
			body: `{"values":{"owner":"alice/bob","seq":1,"note":"first","n":1,"score":1.5,"ok":true,"data":"AAEC"}}`, want: 201,
			save:  itH("etag1", "header:ETag"),
			check: itAll(headerIs("Location", itRows+"/alice%2Fbob/1"), etagIsVersion, jsonNonEmpty("stream"))},
		{name: "get (eventual by default)", method: "GET", path: itRows + "/alice%2Fbob/1", hdr: asReader, want: 200,
			check: itAll(headerIs("ETag", "${etag1}"), etagIsVersion, jsonIs("values.owner", "alice/bob"), jsonIs("values.seq", 1),
				jsonIs("values.note", "first"), jsonIs("values.n", 1), jsonIs("values.score", 1.5), jsonIs("values.ok", true), jsonIs("values.data", "AAEC"))},
		{name: "get (consistency=eventual)", method: "GET", path: itRows + "/alice%2Fbob/1?consistency=eventual", want: 200, check: headerIs("ETag", "${etag1}")},
		{name: "get (Music-Consistency: eventual)", method: "GET", path: itRows + "/alice%2Fbob/1", hdr: itH("Music-Consistency", "eventual"), want: 200},
		{name: "put (eventual)", method: "PUT", path: itRows + "/alice%2Fbob/1", body: `{"values":{"note":"second","n":2}}`, want: 200,
			save: itH("etag2", "header:ETag"), check: itAll(etagIsVersion, headerIsNot("ETag", "${etag1}"))},
		{name: "get after put: the other columns are null", method: "GET", path: itRows + "/alice%2Fbob/1", want: 200,
			check: itAll(headerIs("ETag", "${etag2}"), jsonIs("values.note", "second"), jsonIs("values.n", 2), jsonIs("values.score", nil), jsonIs("values.data", nil))},
		{name: "patch (eventual)", method: "PATCH", path: itRows + "/alice%2Fbob/1?consistency=eventual", body: `{"values":{"score":2.5}}`, want: 200},
		{name: "get after patch", method: "GET", path: itRows + "/alice%2Fbob/1", want: 200, check: itAll(jsonIs("values.note", "second"), jsonIs("values.score", 2.5))},
		{name: "delete (eventual)", method: "DELETE", path: itRows + "/alice%2Fbob/1", want: 200, check: etagIsVersion},
		{name: "get deleted row", method: "GET", path: itRows + "/alice%2Fbob/1", want: 404, code: codeNotFound},
		{name: "get never written row", method: "GET", path: itRows + "/nobody/7", hdr: asReader, want: 404, code: codeNotFound},
		{name: "get row of a missing table", method: "GET", path: "/v1/keyspaces/${ks}/tables/nope/rows/a", want: 404, code: codeNotFound},
		{name: "put row of a missing keyspace", method: "PUT", path: "/v1/keyspaces/${ks}x/tables/events/rows/a/1", body: `{"values":{"note":"x"}}`, want: 404, code: codeNotFound},
		{name: "put: bad JSON", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"note":}}`, want: 400, code: codeInvalid},
		{name: "put: value of the wrong type", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"n":"many"}}`, want: 400, code: codeInvalid},
		{name: "put: int out of range", method: "POST", path: itRows, body: `{"values":{"owner":"alice","seq":4294967296}}`, want: 400, code: codeInvalid},
		{name: "put: bad base64", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"data":"%%%"}}`, want: 400, code: codeInvalid},
		{name: "put: unknown column", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"nope":1}}`, want: 400, code: codeInvalid},
		{name: "put: key column in the values", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"owner":"bob"}}`, want: 400, code: codeInvalid},
		{name: "put: no values", method: "PUT", path: itRows + "/alice/1", body: `{}`, want: 400, code: codeInvalid},
		{name: "put: unknown body field", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"n":1},"when":"now"}`, want: 400, code: codeInvalid},
		{name: "patch: no column", method: "PATCH", path: itRows + "/alice/1", body: `{"values":{}}`, want: 400, code: codeInvalid},
		{name: "delete: with values", method: "DELETE", path: itRows + "/alice/1", body: `{"values":{"n":1}}`, want: 400, code: codeInvalid},
		{name: "insert: key column missing", method: "POST", path: itRows, body: `{"values":{"owner":"alice","note":"x"}}`, want: 400, code: codeInvalid},
		{name: "get: key value of the wrong type", method: "GET", path: itRows + "/alice/one", want: 400, code: codeInvalid},
		{name: "get: key too short", method: "GET", path: itRows + "/alice", want: 400, code: codeInvalid},
		{name: "get: key too long", method: "GET", path: itRows + "/alice/1/2", want: 400, code: codeInvalid},
		{name: "get: unknown consistency", method: "GET", path: itRows + "/alice/1?consistency=sometimes", want: 400, code: codeInvalid},
		{name: "get: unknown parameter", method: "GET", path: itRows + "/alice/1?consistancy=critical", want: 400, code: codeInvalid},
		{name: "get: parameter given twice", method: "GET", path: itRows + "/alice/1?consistency=eventual&consistency=eventual", want: 400, code: codeInvalid},
		{name: "get: parameter and header disagree", method: "GET", path: itRows + "/alice/1?consistency=eventual", hdr: itH("Music-Consistency", "atomic"), want: 400, code: codeInvalid},
		{name: "put: lock with eventual", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"n":1}}`, hdr: itH("Music-Lock", "kv.x~y"), want: 400, code: codeInvalid},
		{name: "put: critical without a lock", method: "PUT", path: itRows + "/alice/1?consistency=critical", body: `{"values":{"n":1}}`, want: 400, code: codeInvalid},
		{name: "put: critical with a malformed lock", method: "PUT", path: itRows + "/alice/1?consistency=critical", body: `{"values":{"n":1}}`, hdr: itH("Music-Lock", "mine"), want: 400, code: codeInvalid},
		{name: "put: bad wait", method: "PUT", path: itRows + "/alice/1?consistency=atomic&wait=forever", body: `{"values":{"n":1}}`, want: 400, code: codeInvalid},
		{name: "put: wait above max_wait", method: "PUT", path: itRows + "/alice/1?consistency=atomic", body: `{"values":{"n":1}}`, hdr: itH("Music-Wait", "1h"), want: 400, code: codeInvalid},
		{name: "put: body too large", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"note":"` + strings.Repeat("x", itMaxBody) + `"}}`, want: 413, code: codeBodyTooLarge},
		{name: "put by the reader", method: "PUT", path: itRows + "/alice/1", body: `{"values":{"n":1}}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "insert by the reader", method: "POST", path: itRows, body: `{"values":{"owner":"alice","seq":1}}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "delete by the reader", method: "DELETE", path: itRows + "/alice/1", hdr: asReader, want: 403, code: codeForbidden},
		{name: "get without a token", method: "GET", path: itRows + "/alice/1", hdr: noToken, want: 401, code: codeUnauthenticated},

		// ---- select: filters, limit, paging ----
		{name: "seed carol/1", method: "PUT", path: itRows + "/carol/1", body: `{"values":{"note":"odd","n":1}}`, want: 200},
		{name: "seed carol/2", method: "PUT", path: itRows + "/carol/2", body: `{"values":{"note":"even","n":2}}`, want: 200},
		{name: "seed carol/3", method: "POST", path: itRows, body: `{"values":{"owner":"carol","seq":3,"note":"odd","n":3}}`, want: 201},
		{name: "seed carol/4", method: "PUT", path: itRows + "/carol/4", body: `{"values":{"note":"even","n":4}}`, want: 200},
		{name: "seed carol/5", method: "PUT", path: itRows + "/carol/5", body: `{"values":{"note":"odd","n":5}}`, want: 200},
		{name: "seed dave/1", method: "PUT", path: itRows + "/dave/1", body: `{"values":{"note":"odd","n":1}}`, want: 200},
		{name: "select a partition, 2 rows a page", method: "GET", path: itRows + "?owner=carol&limit=2", hdr: asReader, want: 200,
			check: pagesAre(2, "1,2,3,4,5")},
		{name: "select with a regular-column filter", method: "GET", path: itRows + "?owner=carol&note=odd&limit=1", want: 200,
			check: pagesAre(1, "1,3,5")},
		{name: "select across partitions", method: "GET", path: itRows + "?seq=1&note=odd", want: 200, check: pagesAre(100, "1,1")},
		{name: "select (critical: a quorum read)", method: "GET", path: itRows + "?owner=carol&consistency=critical", want: 200, check: pagesAre(100, "1,2,3,4,5")},
		{name: "select (Music-Consistency: eventual)", method: "GET", path: itRows + "?owner=carol&n=4", hdr: itH("Music-Consistency", "eventual"), want: 200, check: pagesAre(100, "4")},
		{name: "select nothing", method: "GET", path: itRows + "?owner=nobody", want: 200, check: pagesAre(100, "")},
		{name: "select atomic", method: "GET", path: itRows + "?consistency=atomic", want: 400, code: codeInvalid},
		{name: "select: limit 0", method: "GET", path: itRows + "?limit=0", want: 400, code: codeInvalid},
		{name: "select: limit above the maximum", method: "GET", path: itRows + "?limit=1001", want: 400, code: codeInvalid},
		{name: "select: limit not a number", method: "GET", path: itRows + "?limit=ten", want: 400, code: codeInvalid},
		{name: "select: filter on an unknown column", method: "GET", path: itRows + "?colour=red", want: 400, code: codeInvalid},
		{name: "select: filter value of the wrong type", method: "GET", path: itRows + "?seq=first", want: 400, code: codeInvalid},
		{name: "select: bad page token", method: "GET", path: itRows + "?owner=carol&page=garbage", want: 400, code: codeInvalid},
		{name: "select: with a lock", method: "GET", path: itRows + "?lock=x", want: 400, code: codeInvalid},
		{name: "select: missing table", method: "GET", path: "/v1/keyspaces/${ks}/tables/nope/rows", want: 404, code: codeNotFound},
		{name: "select: not the reader's", method: "GET", path: "/v1/keyspaces/${ks2}/tables/events/rows", hdr: asReader, want: 403, code: codeForbidden},

		// ---- compare-and-set ----
		{name: "insert if absent", method: "POST", path: itRows, body: `{"values":{"owner":"erin","seq":1,"note":"v1"}}`, hdr: itH("If-None-Match", "*"), want: 201,
			save: itH("etagE1", "header:ETag")},
		{name: "insert if absent: present", method: "POST", path: itRows, body: `{"values":{"owner":"erin","seq":1,"note":"again"}}`, hdr: itH("If-None-Match", "*"), want: 412, code: codeConditionFailed},
		{name: "put if the version matches", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"note":"v2"}}`, hdr: itH("If-Match", "${etagE1}"), want: 200,
			save: itH("etagE2", "header:ETag")},
		{name: "put if the version matches: stale", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"note":"lost"}}`, hdr: itH("If-Match", "${etagE1}"), want: 412, code: codeConditionFailed},
		{name: "stale put changed nothing", method: "GET", path: itRows + "/erin/1", want: 200, check: itAll(headerIs("ETag", "${etagE2}"), jsonIs("values.note", "v2"))},
		{name: "put if exists: missing", method: "PUT", path: itRows + "/erin/2", body: `{"values":{"note":"x"}}`, hdr: itH("If-Match", "*"), want: 412, code: codeConditionFailed},
		{name: "put if exists", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"note":"v3","n":3}}`, hdr: itH("If-Match", "*"), want: 200},
		{name: "patch if a column matches", method: "PATCH", path: itRows + "/erin/1", body: `{"values":{"n":4},"if":{"note":"v3"}}`, want: 200},
		{name: "patch if a column matches: other value", method: "PATCH", path: itRows + "/erin/1", body: `{"values":{"n":5},"if":{"note":"v2"}}`, want: 412, code: codeConditionFailed},
		{name: "patch if a column is null", method: "PATCH", path: itRows + "/erin/1", body: `{"values":{"score":0.5},"if":{"score":null,"n":4}}`, want: 200,
			save: itH("etagE3", "header:ETag")},
		{name: "patch if: missing row", method: "PATCH", path: itRows + "/erin/3", body: `{"values":{"n":1},"if":{"n":1}}`, want: 412, code: codeConditionFailed},
		{name: "if: unknown column", method: "PATCH", path: itRows + "/erin/1", body: `{"values":{"n":1},"if":{"nope":1}}`, want: 400, code: codeInvalid},
		{name: "if: key column", method: "PATCH", path: itRows + "/erin/1", body: `{"values":{"n":1},"if":{"seq":1}}`, want: 400, code: codeInvalid},
		{name: "if: value of the wrong type", method: "PATCH", path: itRows + "/erin/1", body: `{"values":{"n":1},"if":{"n":"four"}}`, want: 400, code: codeInvalid},
		{name: "if with If-None-Match", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"n":1},"if":{"n":4}}`, hdr: itH("If-None-Match", "*"), want: 400, code: codeInvalid},
		{name: "If-Match and If-None-Match", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"n":1}}`, hdr: itH("If-Match", "*", "If-None-Match", "*"), want: 400, code: codeInvalid},
		{name: "weak If-Match", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"n":1}}`, hdr: itH("If-Match", `W/"1"`), want: 400, code: codeInvalid},
		{name: "malformed If-Match", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"n":1}}`, hdr: itH("If-Match", "1"), want: 400, code: codeInvalid},
		{name: "If-None-Match with an ETag", method: "PUT", path: itRows + "/erin/1", body: `{"values":{"n":1}}`, hdr: itH("If-None-Match", `"1"`), want: 400, code: codeInvalid},
		{name: "delete if the version matches: other version", method: "DELETE", path: itRows + "/erin/1", hdr: itH("If-Match", `"1"`), want: 412, code: codeConditionFailed},
		{name: "delete if the version matches", method: "DELETE", path: itRows + "/erin/1", hdr: itH("If-Match", "${etagE3}"), want: 200},
		{name: "conditionally deleted row", method: "GET", path: itRows + "/erin/1", want: 404, code: codeNotFound},

		// ---- locks and critical operations ----
		{name: "lock holders of a free key", method: "GET", path: itLocks + "/fay/1", hdr: asReader, want: 200, check: jsonLen("holders", 0)},
		{name: "create lock ref A", method: "POST", path: itLocks + "/fay/1", body: `{"lease":"1m","owner":"client-a"}`, want: 201,
			save: itH("refA", "json:ref"), check: headerIs("Location", "/v1/locks/${refA}")},
		{name: "create lock: bad lease", method: "POST", path: itLocks + "/fay/1", body: `{"lease":"forever"}`, want: 400, code: codeInvalid},
		{name: "create lock: bad type", method: "POST", path: itLocks + "/fay/1", body: `{"type":"exclusive"}`, want: 400, code: codeInvalid},
		{name: "create lock: bad key", method: "POST", path: itLocks + "/fay/first", want: 400, code: codeInvalid},
		{name: "create lock: missing table", method: "POST", path: "/v1/keyspaces/${ks}/tables/nope/locks/a", want: 404, code: codeNotFound},
		{name: "create write lock by the reader", method: "POST", path: itLocks + "/fay/1", hdr: asReader, want: 403, code: codeForbidden},
		{name: "acquire A", method: "POST", path: "/v1/locks/${refA}/acquire", want: 200,
			save: itH("tokA", "json:token"), check: itAll(jsonIs("ref", "${refA}"), jsonIs("previous_unclean", false))},
		{name: "acquire A again: the same grant", method: "POST", path: "/v1/locks/${refA}/acquire?wait=1s", want: 200, check: jsonIs("token", "${tokA}")},
		{name: "lock holders: A", method: "GET", path: itLocks + "/fay/1", want: 200,
			check: itAll(jsonLen("holders", 1), jsonIs("holders.0.ref", "${refA}"), jsonIs("holders.0.token", "${tokA}"),
				jsonIs("holders.0.type", "write"), jsonIs("holders.0.owner", "client-a"), jsonIs("holders.0.lease", "1m0s"))},
		{name: "renew A", method: "POST", path: "/v1/locks/${refA}/renew", want: 204},
		{name: "renew A by the reader", method: "POST", path: "/v1/locks/${refA}/renew", hdr: asReader, want: 204},
		{name: "renew without a token", method: "POST", path: "/v1/locks/${refA}/renew", hdr: noToken, want: 401, code: codeUnauthenticated},
		{name: "put (critical, Music-Lock)", method: "PUT", path: itRows + "/fay/1?consistency=critical", body: `{"values":{"note":"crit1","n":1}}`,
			hdr: itH("Music-Lock", "${refA}"), want: 200, save: itH("etagF1", "header:ETag"), check: jsonHasPrefix("stream", "kv/")},
		{name: "get (critical)", method: "GET", path: itRows + "/fay/1", hdr: itH("Music-Consistency", "critical", "Music-Lock", "${refA}"), want: 200,
			check: itAll(headerIs("ETag", "${etagF1}"), jsonIs("values.note", "crit1"))},
		{name: "insert (critical, lock parameter)", method: "POST", path: itRows + "?consistency=critical&lock=${refA}",
			body: `{"values":{"owner":"fay","seq":1,"note":"crit2","n":2}}`, want: 201, save: itH("etagF2", "header:ETag")},
		{name: "patch (critical) if the version matches", method: "PATCH", path: itRows + "/fay/1?consistency=critical",
			body: `{"values":{"n":3}}`, hdr: itH("Music-Lock", "${refA}", "If-Match", "${etagF2}"), want: 200},
		{name: "patch (critical) if the version matches: stale", method: "PATCH", path: itRows + "/fay/1?consistency=critical",
			body: `{"values":{"n":4}}`, hdr: itH("Music-Lock", "${refA}", "If-Match", "${etagF2}"), want: 412, code: codeConditionFailed},
		{name: "get (critical) sees the critical writes", method: "GET", path: itRows + "/fay/1?consistency=critical&lock=${refA}", want: 200,
			check: itAll(jsonIs("values.note", "crit2"), jsonIs("values.n", 3))},
		{name: "critical with a lock of another key", method: "PUT", path: itRows + "/fay/2?consistency=critical", body: `{"values":{"n":1}}`,
			hdr: itH("Music-Lock", "${refA}"), want: 409, code: codeNotHolder},
		{name: "critical: header and parameter disagree", method: "PUT", path: itRows + "/fay/1?consistency=critical&lock=${refA}x", body: `{"values":{"n":1}}`,
			hdr: itH("Music-Lock", "${refA}"), want: 400, code: codeInvalid},
		{name: "create read lock by the reader", method: "POST", path: itLocks + "/fay/99", body: `{"type":"read"}`, hdr: asReader, want: 201, save: itH("refR", "json:ref")},
		{name: "acquire read lock by the reader", method: "POST", path: "/v1/locks/${refR}/acquire", hdr: asReader, want: 200},
		{name: "lock holders: a reader", method: "GET", path: itLocks + "/fay/99", hdr: asReader, want: 200, check: jsonIs("holders.0.type", "read")},
		{name: "release read lock by the reader", method: "DELETE", path: "/v1/locks/${refR}", hdr: asReader, want: 204},

		// B waits behind A.
		{name: "create lock ref B", method: "POST", path: itLocks + "/fay/1", body: `{"owner":"client-b"}`, want: 201, save: itH("refB", "json:ref")},
		{name: "acquire B while A holds: locked", method: "POST", path: "/v1/locks/${refB}/acquire?wait=100ms", want: 423, code: codeLocked,
			check: itAll(jsonIs("holders.0.ref", "${refA}"), jsonIs("holders.0.token", "${tokA}"), jsonIs("holders.0.owner", "client-a"))},
		{name: "acquire B without waiting: locked", method: "POST", path: "/v1/locks/${refB}/acquire", want: 423, code: codeLocked, check: jsonIs("holders.0.ref", "${refA}")},
		{name: "critical put by waiting B", method: "PUT", path: itRows + "/fay/1?consistency=critical", body: `{"values":{"note":"b"}}`,
			hdr: itH("Music-Lock", "${refB}"), want: 409, code: codeNotHolder},
		{name: "critical get by waiting B", method: "GET", path: itRows + "/fay/1?consistency=critical", hdr: itH("Music-Lock", "${refB}"), want: 409, code: codeNotHolder},
		{name: "atomic put while A holds", method: "PUT", path: itRows + "/fay/1?consistency=atomic&wait=100ms", body: `{"values":{"note":"atomic"}}`,
			want: 423, code: codeLocked, check: itAll(jsonIs("holders.0.ref", "${refA}"), jsonIs("holders.0.token", "${tokA}"))},
		{name: "atomic get while A holds", method: "GET", path: itRows + "/fay/1?consistency=atomic", hdr: itH("Music-Wait", "50ms"), want: 423, code: codeLocked,
			check: jsonIs("holders.0.ref", "${refA}")},
		{name: "conditional (eventual) put while A holds", method: "PUT", path: itRows + "/fay/1?wait=50ms", body: `{"values":{"note":"cas"}}`,
			hdr: itH("If-Match", "*"), want: 423, code: codeLocked, check: jsonIs("holders.0.ref", "${refA}")},
		{name: "A's row is unchanged", method: "GET", path: itRows + "/fay/1", want: 200, check: jsonIs("values.note", "crit2")},
		{name: "force B by the reader", method: "DELETE", path: "/v1/locks/${refB}?force=true", hdr: asReader, want: 403, code: codeForbidden},
		{name: "release: bad force", method: "DELETE", path: "/v1/locks/${refB}?force=maybe", want: 400, code: codeInvalid},
		{name: "acquire a malformed ref", method: "POST", path: "/v1/locks/not-a-ref/acquire", want: 400, code: codeInvalid},
		{name: "acquire: bad wait", method: "POST", path: "/v1/locks/${refB}/acquire?wait=-1s", want: 400, code: codeInvalid},
		{name: "acquire: unknown parameter", method: "POST", path: "/v1/locks/${refB}/acquire?timeout=1s", want: 400, code: codeInvalid},

		// A releases; B, waiting, gets the lock.
		{name: "acquire B, waiting", method: "POST", path: "/v1/locks/${refB}/acquire?wait=20s", bg: "acquireB"},
		{name: "release A", method: "DELETE", path: "/v1/locks/${refA}", want: 204},
		{name: "B is granted", join: "acquireB", want: 200, save: itH("tokB", "json:token"),
			check: itAll(jsonIs("ref", "${refB}"), jsonIs("previous_unclean", false), tokenAbove("tokA"))},
		{name: "critical put by released A", method: "PUT", path: itRows + "/fay/1?consistency=critical", body: `{"values":{"note":"a"}}`,
			hdr: itH("Music-Lock", "${refA}"), want: 409, code: codeNotHolder},
		{name: "acquire released A", method: "POST", path: "/v1/locks/${refA}/acquire", want: 404, code: codeNotFound},
		{name: "renew released A", method: "POST", path: "/v1/locks/${refA}/renew", want: 404, code: codeNotFound},
		{name: "release released A", method: "DELETE", path: "/v1/locks/${refA}", want: 404, code: codeNotFound},
		{name: "force released A", method: "DELETE", path: "/v1/locks/${refA}?force=true", want: 404, code: codeNotFound},
		{name: "critical delete by B", method: "DELETE", path: itRows + "/fay/1?consistency=critical", hdr: itH("Music-Lock", "${refB}"), want: 200},
		{name: "critical put by B", method: "PUT", path: itRows + "/fay/1?consistency=critical", body: `{"values":{"note":"by b","n":7}}`,
			hdr: itH("Music-Lock", "${refB}"), want: 200},

		// B is forced out while it holds.
		{name: "force B out", method: "DELETE", path: "/v1/locks/${refB}?force=true", want: 204},
		{name: "critical put by forced-out B", method: "PUT", path: itRows + "/fay/1?consistency=critical", body: `{"values":{"note":"late"}}`,
			hdr: itH("Music-Lock", "${refB}"), want: 409, code: codeNotHolder},
		{name: "acquire forced-out B", method: "POST", path: "/v1/locks/${refB}/acquire", want: 404, code: codeNotFound},
		{name: "lock holders after the force", method: "GET", path: itLocks + "/fay/1", want: 200, check: jsonLen("holders", 0)},
		{name: "create lock ref C", method: "POST", path: itLocks + "/fay/1", want: 201, save: itH("refC", "json:ref")},
		{name: "acquire C after an unclean end", method: "POST", path: "/v1/locks/${refC}/acquire?wait=5s", want: 200,
			check: itAll(jsonIs("previous_unclean", true), tokenAbove("tokB"))},
		{name: "critical put by B after C's grant", method: "PUT", path: itRows + "/fay/1?consistency=critical", body: `{"values":{"note":"late"}}`,
			hdr: itH("Music-Lock", "${refB}"), want: 409, code: codeNotHolder},
		{name: "get (critical) by C", method: "GET", path: itRows + "/fay/1?consistency=critical", hdr: itH("Music-Lock", "${refC}"), want: 200,
			check: itAll(jsonIs("values.note", "by b"), jsonIs("values.n", 7))},
		{name: "release C", method: "DELETE", path: "/v1/locks/${refC}", want: 204},

		// ---- atomic ----
		{name: "put (atomic)", method: "PUT", path: itRows + "/fay/1?consistency=atomic&wait=5s", body: `{"values":{"note":"atomic","n":8}}`, want: 200,
			save: itH("etagF3", "header:ETag")},
		{name: "get (atomic)", method: "GET", path: itRows + "/fay/1?consistency=atomic", want: 200, check: itAll(headerIs("ETag", "${etagF3}"), jsonIs("values.note", "atomic"))},
		{name: "patch (atomic, Music-Consistency)", method: "PATCH", path: itRows + "/fay/1", body: `{"values":{"n":9}}`,
			hdr: itH("Music-Consistency", "atomic", "Music-Wait", "5s"), want: 200},
		{name: "insert (atomic) if absent: present", method: "POST", path: itRows + "?consistency=atomic", body: `{"values":{"owner":"fay","seq":1}}`,
			hdr: itH("If-None-Match", "*"), want: 412, code: codeConditionFailed},
		{name: "insert (atomic)", method: "POST", path: itRows + "?consistency=atomic", body: `{"values":{"owner":"fay","seq":2,"note":"two"}}`, want: 201},
		{name: "delete (atomic)", method: "DELETE", path: itRows + "/fay/2?consistency=atomic", want: 200},
		{name: "get (atomic) of a deleted row", method: "GET", path: itRows + "/fay/2?consistency=atomic", want: 404, code: codeNotFound},
		// An atomic write waits for a holder to release.
		{name: "create lock ref D", method: "POST", path: itLocks + "/fay/1", want: 201, save: itH("refD", "json:ref")},
		{name: "acquire D", method: "POST", path: "/v1/locks/${refD}/acquire", want: 200},
		{name: "put (atomic) waiting for D", method: "PUT", path: itRows + "/fay/1?consistency=atomic&wait=20s", body: `{"values":{"note":"after d"}}`, bg: "atomicAfterD"},
		{name: "release D", method: "DELETE", path: "/v1/locks/${refD}", want: 204},
		{name: "atomic put done", join: "atomicAfterD", want: 200},
		{name: "get after the waiting atomic put", method: "GET", path: itRows + "/fay/1", want: 200, check: itAll(jsonIs("values.note", "after d"), jsonIs("values.n", nil))},

		// ---- work queues ----
		{name: "create queue", method: "POST", path: itQueues, body: `{"name":"jobs","priorities":2,"shards":4,"max_attempts":2,"max_payload_bytes":64}`, want: 201,
			check: itAll(headerIs("Location", itQueues+"/jobs"), jsonIs("name", "jobs"), jsonIs("namespace", "${ks}"), jsonIs("shards", 4),
				jsonIs("priorities", 2), jsonIs("max_attempts", 2), jsonIs("lease", "30s"), jsonIs("dedup_window", "24h0m0s"), jsonNonEmpty("created"))},
		{name: "create queue again, same settings", method: "POST", path: itQueues, body: `{"name":"jobs","priorities":2,"shards":4,"max_attempts":2,"max_payload_bytes":64}`, want: 201},
		{name: "create queue again, other settings", method: "POST", path: itQueues, body: `{"name":"jobs","shards":8}`, want: 409, code: codeExists},
		{name: "create queue by the reader", method: "POST", path: itQueues, body: `{"name":"q2"}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "create queue: too many shards", method: "POST", path: itQueues, body: `{"name":"q2","shards":1000}`, want: 400, code: codeInvalid},
		{name: "create queue: bad lease", method: "POST", path: itQueues, body: `{"name":"q2","lease":"soon"}`, want: 400, code: codeInvalid},
		{name: "create queue: bad name", method: "POST", path: itQueues, body: `{"name":"Q"}`, want: 400, code: codeInvalid},
		{name: "create scratch queue", method: "POST", path: itQueues, body: `{"name":"scratch"}`, want: 201},
		{name: "list queues", method: "GET", path: itQueues, hdr: asReader, want: 200, check: namesAre("queues", "jobs", "scratch")},
		{name: "get queue", method: "GET", path: itQueues + "/jobs", hdr: asReader, want: 200, check: jsonIs("max_payload_bytes", 64)},
		{name: "get missing queue", method: "GET", path: itQueues + "/nope", want: 404, code: codeNotFound},
		{name: "drop queue", method: "DELETE", path: itQueues + "/scratch", want: 204},
		{name: "drop dropped queue", method: "DELETE", path: itQueues + "/scratch", want: 404, code: codeNotFound},
		{name: "enqueue into a missing queue", method: "POST", path: itQueues + "/nope/jobs", body: `{"payload":1}`, want: 404, code: codeNotFound},
		{name: "enqueue: payload too large", method: "POST", path: itQueues + "/jobs/jobs", body: `{"payload":"` + strings.Repeat("x", 80) + `"}`, want: 400, code: codeInvalid},
		{name: "enqueue: no such priority", method: "POST", path: itQueues + "/jobs/jobs", body: `{"payload":1,"priority":2}`, want: 400, code: codeInvalid},
		{name: "enqueue: bad id", method: "POST", path: itQueues + "/jobs/jobs", body: `{"id":"a b"}`, want: 400, code: codeInvalid},
		{name: "enqueue by the reader", method: "POST", path: itQueues + "/jobs/jobs", body: `{"payload":1}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "enqueue with an id", method: "POST", path: itQueues + "/jobs/jobs", body: `{"id":"order-1","payload":{"order":1}}`, want: 201,
			check: itAll(jsonIs("id", "order-1"), jsonIs("duplicate", false), jsonNonEmpty("due"))},
		{name: "enqueue the same id", method: "POST", path: itQueues + "/jobs/jobs", body: `{"id":"order-1","payload":{"order":2}}`, want: 200,
			check: itAll(jsonIs("id", "order-1"), jsonIs("duplicate", true))},
		{name: "enqueue high priority", method: "POST", path: itQueues + "/jobs/jobs", body: `{"payload":"urgent","priority":1}`, want: 201, save: itH("urgent", "json:id")},
		{name: "enqueue delayed", method: "POST", path: itQueues + "/jobs/jobs", body: `{"id":"later","delay":"1h"}`, want: 201},
		{name: "peek", method: "GET", path: itQueues + "/jobs/jobs?limit=10", hdr: asReader, want: 200,
			check: itAll(jsonIs("jobs.0.id", "${urgent}"), jsonIs("jobs.0.payload", "urgent"), jsonIs("jobs.1.id", "order-1"), jsonIs("jobs.1.payload.order", 1), jsonIs("jobs.2", nil))},
		{name: "peek: bad limit", method: "GET", path: itQueues + "/jobs/jobs?limit=0", want: 400, code: codeInvalid},
		{name: "enqueue a job to edit", method: "POST", path: itQueues + "/jobs/jobs", body: `{"id":"edit-1","payload":{"n":1}}`, want: 201},
		{name: "get a job by id", method: "GET", path: itQueues + "/jobs/jobs/edit-1", hdr: asReader, want: 200,
			check: itAll(jsonIs("id", "edit-1"), jsonIs("payload.n", 1), jsonIs("priority", 0), jsonIs("attempts", 0), jsonNonEmpty("due"), jsonIs("token", nil))},
		{name: "get a missing job", method: "GET", path: itQueues + "/jobs/jobs/nope", want: 404, code: codeNotFound},
		{name: "update a job: payload and priority", method: "PATCH", path: itQueues + "/jobs/jobs/edit-1", body: `{"payload":{"n":2},"priority":1}`, want: 200,
			check: itAll(jsonIs("id", "edit-1"), jsonIs("payload.n", 2), jsonIs("priority", 1))},
		{name: "peek after the update (the job moved up)", method: "GET", path: itQueues + "/jobs/jobs?limit=10", want: 200,
			check: itAll(jsonIs("jobs.0.id", "${urgent}"), jsonIs("jobs.1.id", "edit-1"), jsonIs("jobs.1.payload.n", 2), jsonIs("jobs.2.id", "order-1"), jsonIs("jobs.3", nil))},
		{name: "update a job: nothing to change", method: "PATCH", path: itQueues + "/jobs/jobs/edit-1", body: `{}`, want: 400, code: codeInvalid},
		{name: "update a job: no such priority", method: "PATCH", path: itQueues + "/jobs/jobs/edit-1", body: `{"priority":5}`, want: 400, code: codeInvalid},
		{name: "update a job by the reader", method: "PATCH", path: itQueues + "/jobs/jobs/edit-1", body: `{"priority":0}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "update a missing job", method: "PATCH", path: itQueues + "/jobs/jobs/nope", body: `{"priority":0}`, want: 404, code: codeNotFound},
		{name: "get the job after the refusals", method: "GET", path: itQueues + "/jobs/jobs/edit-1", want: 200, check: itAll(jsonIs("payload.n", 2), jsonIs("priority", 1))},
		{name: "delete a job by the reader", method: "DELETE", path: itQueues + "/jobs/jobs/edit-1", hdr: asReader, want: 403, code: codeForbidden},
		{name: "delete a job", method: "DELETE", path: itQueues + "/jobs/jobs/edit-1", want: 204},
		{name: "delete it again", method: "DELETE", path: itQueues + "/jobs/jobs/edit-1", want: 404, code: codeNotFound},
		{name: "get the deleted job", method: "GET", path: itQueues + "/jobs/jobs/edit-1", want: 404, code: codeNotFound},
		{name: "claim by the reader", method: "POST", path: itQueues + "/jobs/claim", body: `{}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "claim: bad lease", method: "POST", path: itQueues + "/jobs/claim", body: `{"lease":"1ms"}`, want: 400, code: codeInvalid},
		{name: "claim: unknown field", method: "POST", path: itQueues + "/jobs/claim", body: `{"leese":"1s"}`, want: 400, code: codeInvalid},
		{name: "claim (high priority first)", method: "POST", path: itQueues + "/jobs/claim", body: `{"worker":"w1","lease":"1m"}`, want: 200,
			save:  itH("tok1", "json:token"),
			check: itAll(jsonIs("id", "${urgent}"), jsonIs("holder", "w1"), jsonIs("attempts", 1), jsonNonEmpty("lease_until"), jsonNonEmpty("token"))},
		{name: "claim", method: "POST", path: itQueues + "/jobs/claim", body: `{"worker":"w2","lease":"1m"}`, want: 200,
			save: itH("tok2", "json:token"), check: jsonIs("id", "order-1")},
		{name: "claim of an empty queue, no wait", method: "POST", path: itQueues + "/jobs/claim", want: 204},
		{name: "claim of an empty queue, waiting", method: "POST", path: itQueues + "/jobs/claim", body: `{"wait":"200ms"}`, want: 204},
		{name: "get a claimed job", method: "GET", path: itQueues + "/jobs/jobs/order-1", want: 200,
			check: itAll(jsonIs("holder", "w2"), jsonIs("token", "${tok2}"), jsonIs("attempts", 1))},
		{name: "update a claimed job", method: "PATCH", path: itQueues + "/jobs/jobs/order-1", body: `{"payload":{"order":9}}`, want: 409, code: codeNotHolder},
		{name: "delete a claimed job", method: "DELETE", path: itQueues + "/jobs/jobs/order-1", want: 409, code: codeNotHolder},
		{name: "extend to a short lease", method: "POST", path: itQueues + "/jobs/jobs/order-1/extend", body: `{"token":"${tok2}","lease":"100ms"}`, want: 200,
			save: itH("tok2", "json:token", "short_until", "json:lease_until")},
		{name: "wait for the short lease to end", action: func(t *testing.T, e *itEnv) {
			end, err := time.Parse(time.RFC3339Nano, e.vars["short_until"])
			if err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 5*time.Second, "the lease to end", func() bool { return time.Now().After(end) })
		}},
		{name: "complete after the lease ended", method: "POST", path: itQueues + "/jobs/jobs/order-1/complete", body: `{"token":"${tok2}"}`, want: 410, code: codeLeaseExpired},
		{name: "extend after the lease ended", method: "POST", path: itQueues + "/jobs/jobs/order-1/extend", body: `{"token":"${tok2}"}`, want: 410, code: codeLeaseExpired},
		{name: "complete with another claim's token", method: "POST", path: itQueues + "/jobs/jobs/order-1/complete", body: `{"token":"${tok1}"}`, want: 409, code: codeNotHolder},
		{name: "complete: no token", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/complete", body: `{}`, want: 400, code: codeInvalid},
		{name: "complete: malformed token", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/complete", body: `{"token":"x"}`, want: 400, code: codeInvalid},
		{name: "complete: unknown field", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/complete", body: `{"token":"${tok1}","delay":"1s"}`, want: 400, code: codeInvalid},
		{name: "extend", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/extend", body: `{"token":"${tok1}","lease":"2m"}`, want: 200,
			save: itH("tok3", "json:token"), check: itAll(jsonIs("id", "${urgent}"), jsonNonEmpty("lease_until"))},
		{name: "complete with the token before extend", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/complete", body: `{"token":"${tok1}"}`, want: 409, code: codeNotHolder},
		{name: "complete", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/complete", body: `{"token":"${tok3}"}`, want: 204},
		{name: "complete again (a retry)", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/complete", body: `{"token":"${tok3}"}`, want: 204},
		{name: "release a completed job", method: "POST", path: itQueues + "/jobs/jobs/${urgent}/release", body: `{"token":"${tok3}"}`, want: 409, code: codeNotHolder},
		// The reaper returns order-1 (its lease ended): claim it again, fail it twice: dead.
		{name: "claim the expired job again", method: "POST", path: itQueues + "/jobs/claim", body: `{"worker":"w3","wait":"10s"}`, want: 200,
			save: itH("tok4", "json:token"), check: itAll(jsonIs("id", "order-1"), jsonIs("attempts", 2), jsonIs("payload.order", 1), jsonNonEmpty("error"))},
		{name: "release with an error: dead", method: "POST", path: itQueues + "/jobs/jobs/order-1/release", body: `{"token":"${tok4}","error":"boom"}`, want: 200,
			check: itAll(jsonIs("id", "order-1"), jsonIs("error", "boom"), jsonNonEmpty("died"))},
		{name: "dead letters", method: "GET", path: itQueues + "/jobs/dead", hdr: asReader, want: 200,
			check: itAll(jsonIs("jobs.0.id", "order-1"), jsonIs("jobs.0.error", "boom"), jsonIs("jobs.1", nil), jsonIs("next", nil))},
		{name: "dead letters: bad page", method: "GET", path: itQueues + "/jobs/dead?page=zz", want: 400, code: codeInvalid},
		{name: "retry a dead letter", method: "POST", path: itQueues + "/jobs/dead/order-1/retry", want: 200, check: jsonIs("attempts", 0)},
		{name: "retry it again", method: "POST", path: itQueues + "/jobs/dead/order-1/retry", want: 404, code: codeNotFound},
		{name: "claim the retried job", method: "POST", path: itQueues + "/jobs/claim", body: `{"wait":"5s"}`, want: 200,
			save: itH("tok5", "json:token"), check: jsonIs("id", "order-1")},
		{name: "release it (no error), after a delay", method: "POST", path: itQueues + "/jobs/jobs/order-1/release", body: `{"token":"${tok5}","delay":"1h"}`, want: 200,
			check: itAll(jsonIs("attempts", 0), jsonIs("died", nil))},
		{name: "release: lease given", method: "POST", path: itQueues + "/jobs/jobs/order-1/release", body: `{"token":"${tok5}","lease":"1s"}`, want: 400, code: codeInvalid},
		{name: "nothing due", method: "POST", path: itQueues + "/jobs/claim", want: 204},

		// ---- ownership: "here" (events) is a's, "there" (remote) is b's (see startOwnership) ----
		{name: "ownership view", method: "GET", path: "/v1/ownership", hdr: asReader, want: 200,
			check: itAll(jsonIs("site", "a"), jsonIs("partitions.0.partition", "here"), jsonIs("partitions.0.owner.site", "a"),
				jsonIs("partitions.1.owner.site", "b"), jsonIs("partitions.1.desired", "b"))},
		{name: "create table remote", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"name":"remote","columns":[{"name":"id","type":"text"},{"name":"v","type":"text"}],"partition_key":["id"]}`, want: 201},
		{name: "write at a non-owner", method: "PUT", path: "/v1/keyspaces/${ks}/tables/remote/rows/r1", body: `{"values":{"v":"x"}}`,
			want: 409, code: codeNotOwner, check: itAll(jsonIs("partition", "there"), jsonIs("owner.site", "b"), jsonIs("owner.address", "b.it:8080"))},
		{name: "the refused write changed nothing", method: "GET", path: "/v1/keyspaces/${ks}/tables/remote/rows/r1", want: 404, code: codeNotFound},
		{name: "move by a reader", method: "PUT", path: "/v1/ownership/moves/there", body: `{"site":"a"}`, hdr: asReader, want: 403, code: codeForbidden},
		{name: "move to an unknown site", method: "PUT", path: "/v1/ownership/moves/there", body: `{"site":"zz"}`, want: 400, code: codeInvalid},
		{name: "move of an unknown partition", method: "PUT", path: "/v1/ownership/moves/nowhere", body: `{"site":"a"}`, want: 400, code: codeInvalid},
		{name: "move there to a", method: "PUT", path: "/v1/ownership/moves/there", body: `{"site":"a"}`, want: 202, check: jsonIs("site", "a")},
		{name: "a serves there", action: func(t *testing.T, e *itEnv) {
			testenv.WaitFor(t, 30*time.Second, "a to serve there", func() bool { return e.serves("a", "there") })
		}},
		{name: "write at the new owner", method: "PUT", path: "/v1/keyspaces/${ks}/tables/remote/rows/r1", body: `{"values":{"v":"x"}}`, want: 200},
		{name: "undo the move", method: "DELETE", path: "/v1/ownership/moves/there", want: 202},
		{name: "drain b", method: "PUT", path: "/v1/ownership/drains/b", want: 202},
		{name: "undrain b", method: "DELETE", path: "/v1/ownership/drains/b", want: 202},
		{name: "b serves there again", action: func(t *testing.T, e *itEnv) {
			testenv.WaitFor(t, 30*time.Second, "b to serve there again", func() bool { return e.serves("b", "there") })
		}},
		{name: "write at the old owner again", method: "PUT", path: "/v1/keyspaces/${ks}/tables/remote/rows/r1", body: `{"values":{"v":"y"}}`,
			want: 409, code: codeNotOwner},

		// ---- 503: the eventual log of a second daemon is not elected ----
		// The second daemon has the same state Instance as the first, so its eventual log is the
		// same journal stream, whose single writer is elected through the lock service: the
		// first daemon holds that election, so the second's writes are never journaled (the real
		// journal's one-writer rule, not a fake) and each eventual write ends at its short
		// op_timeout. Its reads go to the backend and work.
		{name: "start a second daemon with the same instance", action: func(t *testing.T, e *itEnv) { e.startTwin(t) }},
		{name: "twin: get", server: "twin", method: "GET", path: itRows + "/fay/1", want: 200, check: jsonIs("values.note", "after d")},
		{name: "twin: put (eventual) is never journaled", server: "twin", method: "PUT", path: itRows + "/gus/1", body: `{"values":{"note":"lost"}}`,
			want: 503, code: codeUnavailable},
		{name: "twin: the unjournaled put was not applied", server: "twin", method: "GET", path: itRows + "/gus/1", want: 404, code: codeNotFound},
		{name: "first daemon: put (eventual) still works", method: "PUT", path: itRows + "/gus/2", body: `{"values":{"note":"ok"}}`, want: 200},

		// ---- 503: a dependency goes down (see itEnv.down) ----
		{name: "take a dependency down", action: func(t *testing.T, e *itEnv) { e.down(t) }},
		{name: "down: put (atomic)", method: "PUT", path: itRows + "/fay/1?consistency=atomic&wait=1s", body: `{"values":{"note":"x"}}`, want: 503, code: codeUnavailable},
		{name: "down: create lock", only: "embedded", method: "POST", path: itLocks + "/fay/1", want: 503, code: codeUnavailable},
		{name: "down: lock holders", only: "embedded", method: "GET", path: itLocks + "/fay/1", want: 503, code: codeUnavailable},
		{name: "down: list keyspaces", only: "distributed", method: "GET", path: "/v1/keyspaces", want: 503, code: codeUnavailable},
		{name: "down: get keyspace", only: "distributed", method: "GET", path: "/v1/keyspaces/${ks}", want: 503, code: codeUnavailable},
		{name: "down: get (eventual)", only: "distributed", method: "GET", path: itRows + "/fay/1", want: 503, code: codeUnavailable},
		{name: "down: select", only: "distributed", method: "GET", path: itRows + "?owner=carol", want: 503, code: codeUnavailable},
		{name: "down: create table", only: "distributed", method: "POST", path: "/v1/keyspaces/${ks}/tables",
			body: `{"name":"late","columns":[{"name":"id","type":"text"},{"name":"v","type":"int"}],"partition_key":["id"]}`, want: 503, code: codeUnavailable},
		{name: "down: a client's mistake is still 400", method: "PUT", path: itRows + "/fay/1", body: `{"values":`, want: 400, code: codeInvalid},
	}
}

// ---- checks ----

type itCheck = func(t *testing.T, e *itEnv, r itResp)

func itAll(cs ...itCheck) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		for _, c := range cs {
			c(t, e, r)
		}
	}
}

func jsonIs(path string, want any) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		w := fmt.Sprint(want)
		if s, ok := want.(string); ok {
			w = e.expand(t, s)
		}
		if got := fmt.Sprint(r.get(path)); got != w {
			t.Errorf("%s = %s, want %s (body %s)", path, got, w, trunc(r.body))
		}
	}
}

func jsonNonEmpty(path string) itCheck {
	return func(t *testing.T, _ *itEnv, r itResp) {
		t.Helper()
		if s, _ := r.get(path).(string); s == "" {
			t.Errorf("%s is empty (body %s)", path, trunc(r.body))
		}
	}
}

func jsonHasPrefix(path, prefix string) itCheck {
	return func(t *testing.T, _ *itEnv, r itResp) {
		t.Helper()
		if s, _ := r.get(path).(string); !strings.HasPrefix(s, prefix) {
			t.Errorf("%s = %q, want a prefix %q", path, s, prefix)
		}
	}
}

func jsonLen(path string, n int) itCheck {
	return func(t *testing.T, _ *itEnv, r itResp) {
		t.Helper()
		a, ok := r.get(path).([]any)
		if !ok || len(a) != n {
			t.Errorf("%s: want %d elements, body %s", path, n, trunc(r.body))
		}
	}
}

func headerIs(name, want string) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		if got, w := r.hdr.Get(name), e.expand(t, want); got != w {
			t.Errorf("%s: %q, want %q", name, got, w)
		}
	}
}

func headerIsNot(name, other string) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		if got := r.hdr.Get(name); got == e.expand(t, other) {
			t.Errorf("%s: %q unchanged", name, got)
		}
	}
}

func headerHas(name, part string) itCheck {
	return func(t *testing.T, _ *itEnv, r itResp) {
		t.Helper()
		if got := r.hdr.Get(name); !strings.Contains(got, part) {
			t.Errorf("%s: %q, want it to contain %q", name, got, part)
		}
	}
}

// etagIsVersion checks that the ETag is the quoted version of the body.
func etagIsVersion(t *testing.T, _ *itEnv, r itResp) {
	t.Helper()
	v := fmt.Sprint(r.get("version"))
	if n, err := strconv.ParseInt(v, 10, 64); err != nil || n <= 0 || r.hdr.Get("ETag") != `"`+v+`"` {
		t.Errorf("ETag %q, version %s", r.hdr.Get("ETag"), v)
	}
}

// tokenAbove checks that the grant's token is above the token saved in variable v.
func tokenAbove(v string) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		prev, err1 := strconv.ParseUint(e.vars[v], 10, 64)
		got, err2 := strconv.ParseUint(fmt.Sprint(r.get("token")), 10, 64)
		if err1 != nil || err2 != nil || got <= prev {
			t.Errorf("token %v, want above %s = %s", r.get("token"), v, e.vars[v])
		}
	}
}

// namesAre checks the names of a list (keyspaces, tables).
func namesAre(list string, names ...string) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		items, _ := r.get(list).([]any)
		var got, want []string
		for _, it := range items {
			got = append(got, fmt.Sprint(it.(map[string]any)["name"]))
		}
		for _, n := range names {
			want = append(want, e.expand(t, n))
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", list, got, want)
		}
	}
}

// pagesAre follows the select's pages (same request, page=next) and checks that no page holds
// more than limit rows and that the seq values of all rows, in order, are seqs.
func pagesAre(limit int, seqs string) itCheck {
	return func(t *testing.T, e *itEnv, r itResp) {
		t.Helper()
		var got []string
		for i := 0; ; i++ {
			rows, _ := r.get("rows").([]any)
			if len(rows) > limit {
				t.Errorf("page %d: %d rows, limit %d", i, len(rows), limit)
			}
			for _, row := range rows {
				got = append(got, fmt.Sprint(jsonGet(row, "values.seq")))
				if v := fmt.Sprint(jsonGet(row, "version")); v == "" || v == "0" {
					t.Errorf("page %d: row without a version: %v", i, row)
				}
			}
			next, _ := r.get("next").(string)
			if next == "" {
				break
			}
			if i > 20 {
				t.Fatalf("more than 20 pages")
			}
			u := r.req.URL
			q := u.Query()
			q.Set("page", next)
			path := u.Path + "?" + q.Encode()
			r = e.do(t, r.base, r.req.Method, path, "", r.reqHdr)
			if r.status != 200 {
				t.Fatalf("next page: %d %s", r.status, trunc(r.body))
			}
		}
		if s := strings.Join(got, ","); s != seqs {
			t.Errorf("rows' seq: %s, want %s", s, seqs)
		}
	}
}

// ---- the environment ----

// itEnv is one mode's daemon: a real state service behind a real API server.
type itEnv struct {
	mode   string
	client *http.Client
	base   string
	srv    *Server
	logs   *itLog
	vars   map[string]string
	// deps of the state service, for the second daemon.
	deps state.Deps
	scfg state.Config
	twin string // base URL of the second daemon, once started
	down func(t *testing.T)
	// queues is the work queue's store, shared by the daemons.
	queues queue.Store
	// ownA is the first daemon's ownership node (site a); site b has a node without a server.
	ownA  *ownership.Node
	reqID int

	mu  sync.Mutex
	log []itRecord
}

type itRecord struct {
	method, path, consistency string
	status                    int
	code                      string
}

type itResp struct {
	base   string
	req    *http.Request
	reqHdr map[string]string
	status int
	hdr    http.Header
	body   []byte
	json   any
}

func (r itResp) get(path string) any { return jsonGet(r.json, path) }

func (r itResp) code() string {
	s, _ := r.get("code").(string)
	return s
}

func jsonGet(v any, path string) any {
	for _, k := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func trunc(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 600 {
		s = s[:600] + "..."
	}
	return s
}

// itLog collects the API server's log lines.
type itLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *itLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *itLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func itDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// itStateConfig is the state configuration of both modes: one eventual log shard, so that
// after the first acknowledged eventual write the whole eventual log is known to be elected.
func itStateConfig() state.Config {
	cfg := state.DefaultConfig()
	cfg.Site, cfg.Instance = "site-a", "it-0"
	cfg.EventualShards = 1
	return cfg
}

// newITEnv names the scenario's keyspaces and fills the variables.
func newITEnv(mode string) *itEnv {
	ks := testenv.UniqueName("it_")
	return &itEnv{
		mode:   mode,
		client: &http.Client{Timeout: 40 * time.Second},
		logs:   &itLog{},
		vars: map[string]string{
			"ks": ks, "ks2": ks + "_b", "reader": itReaderToken, "writer": itWriterToken,
		},
	}
}

// serve starts the state service (until the test ends) and an API server on it with the
// scenario's tokens; it returns the server's base URL.
func (e *itEnv) serve(t *testing.T, cfg state.Config, deps state.Deps, logs io.Writer, own Ownership) (string, *Server) {
	t.Helper()
	svc, err := state.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = svc.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	acfg := DefaultConfig()
	acfg.Listen = "127.0.0.1:0"
	acfg.MaxBodyBytes = itMaxBody
	acfg.Tokens = []Token{
		{Name: "writer", Token: itWriterToken, Keyspaces: []string{"*"}, Access: "write"},
		{Name: "reader", Token: itReaderToken, Keyspaces: []string{e.vars["ks"]}, Access: "read"},
	}
	qcfg := queue.DefaultConfig()
	qcfg.ReapInterval, qcfg.ReapGrace = 50*time.Millisecond, 0
	qsvc, err := queue.New(qcfg, queue.Deps{Store: e.queues, Logger: itDiscard()})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = qsvc.Run(ctx)
	}()
	srv, err := NewServer(acfg, Deps{Logger: slog.New(slog.NewTextHandler(logs, nil)), Registry: prometheus.NewRegistry(), State: svc, Queues: qsvc,
		Ownership: own})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), srv
}

// startOwnership runs the ownership nodes of sites a (the first daemon's) and b on the state's
// lock service and journal, with the partition "here" (table ${ks}.events) pinned to a and
// "there" (${ks}.remote) pinned to b, and waits until each serves its partition.
func (e *itEnv) startOwnership(t *testing.T) {
	t.Helper()
	pol := policies.Ownership{Sites: []string{"a", "b"}, FailoverGrace: time.Second, Partitions: []policies.PartitionSet{
		{Name: "here", Tables: []string{e.vars["ks"] + ".events"}, Placement: policies.Placement{Mode: policies.PlacePinned, Sites: []string{"a"}}},
		{Name: "there", Tables: []string{e.vars["ks"] + ".remote"}, Placement: policies.Placement{Mode: policies.PlacePinned, Sites: []string{"b"}}},
	}}
	nodes := map[string]*ownership.Node{}
	for _, site := range []string{"a", "b"} {
		n, err := ownership.New(ownership.Config{Site: site, Instance: site + "-it", Address: site + ".it:8080", Policy: pol, Poll: 200 * time.Millisecond},
			ownership.Deps{Locks: e.deps.Locks, Journal: e.deps.Journal, Logger: itDiscard()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = n.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		nodes[site] = n
	}
	e.ownA = nodes["a"]
	testenv.WaitFor(t, 30*time.Second, "a to serve here and b there", func() bool {
		return e.serves("a", "here") && e.serves("b", "there")
	})
}

// serves reports whether the first daemon's view shows site serving partition p.
func (e *itEnv) serves(site, p string) bool {
	for _, pv := range e.ownA.View().Partitions {
		if pv.Partition == p {
			return pv.Owner != nil && pv.Owner.Site == site && (site != "a" || pv.State == "serving")
		}
	}
	return false
}

// startTwin starts a second daemon on the same dependencies with the same state Instance and a
// short op_timeout (see the scenario). The first daemon's eventual log has acknowledged writes
// by now, so it leads the election of the one shard: the twin's writer only campaigns.
func (e *itEnv) startTwin(t *testing.T) {
	cfg := e.scfg
	cfg.OpTimeout = 500 * time.Millisecond
	e.twin, _ = e.serve(t, cfg, e.deps, e.logs, nil)
}

func newEmbeddedIT(t *testing.T) *itEnv {
	e := newITEnv("embedded")
	dir := t.TempDir()
	store, err := journal.OpenEmbedded(dir+"/journal", itDiscard())
	if err != nil {
		t.Fatal(err)
	}
	backend, err := state.OpenEmbeddedBackend(dir+"/state", itDiscard())
	if err != nil {
		t.Fatal(err)
	}
	lockSvc := locks.NewInProcess(locks.InProcessConfig{FirstToken: uint64(time.Now().UnixMicro())})
	t.Cleanup(func() {
		_ = lockSvc.Close()
		_ = backend.Close()
		_ = store.Close()
	})
	qstore, err := queue.OpenEmbeddedStore(dir+"/queue", time.Now, itDiscard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = qstore.Close() })
	e.queues = qstore
	e.scfg = itStateConfig()
	e.deps = state.Deps{Backend: backend, Journal: store, Locks: lockSvc, Clock: journal.NewClock(time.Now, 0), Logger: itDiscard()}
	e.startOwnership(t)
	e.base, e.srv = e.serve(t, e.scfg, e.deps, e.logs, e.ownA)
	// In embedded mode the lock service is in-process: the dependency that goes down is that
	// service, closed under the running daemons as at shutdown. Every operation that needs a
	// lock then fails with locks.ErrClosed, which must be 503.
	e.down = func(*testing.T) { _ = lockSvc.Close() }
	return e
}

func newDistributedIT(t *testing.T) *itEnv {
	e := newITEnv("distributed")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ccfg := journal.DefaultCassandraConfig()
	ccfg.ContactPoints = []string{testenv.Cassandra(t)}
	ccfg.Keyspace = testenv.UniqueName("musicd_it_")
	ccfg.Timeout = 10 * time.Second
	// Two sessions: the daemon's, which the scenario closes to take Cassandra away from it, and
	// the test's own, which drops the test's keyspaces at the end (Cassandra 2.1: every test has
	// its own keyspaces, and drops them).
	admin, err := journal.DialCassandra(ctx, ccfg, itDiscard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, ks := range []string{ccfg.Keyspace, e.vars["ks"], e.vars["ks2"]} {
			if err := admin.Session.Query(`DROP KEYSPACE IF EXISTS ` + ks).Exec(); err != nil {
				t.Errorf("drop keyspace %s: %v", ks, err)
			}
		}
		admin.Close()
	})
	deps, cass, closeCass := distributedDeps(t, ccfg, nil, itDiscard())
	qstore, err := queue.NewCassandraStore(ctx, cass.Session, queue.CassandraConfig{Keyspace: ccfg.Keyspace})
	if err != nil {
		t.Fatal(err)
	}
	e.queues = qstore
	e.scfg = itStateConfig()
	e.deps = deps
	e.startOwnership(t)
	e.base, e.srv = e.serve(t, e.scfg, e.deps, e.logs, e.ownA)
	// In distributed mode the daemon's journal and backend share its own Cassandra session:
	// closing it takes Cassandra away from the daemon for real (the driver answers
	// ErrSessionClosed, as it would with no node reachable), while ZooKeeper stays up.
	e.down = func(t *testing.T) {
		closeCass()
		testenv.WaitFor(t, 5*time.Second, "the daemon's Cassandra session to be closed", cass.Session.Closed)
	}
	return e
}

// ---- running the scenario ----

func (e *itEnv) expand(t *testing.T, s string) string {
	t.Helper()
	return os.Expand(s, func(k string) string {
		v, ok := e.vars[k]
		if !ok {
			t.Errorf("variable %s is not set (an earlier step failed?)", k)
		}
		return v
	})
}

// do sends one request and records its response.
func (e *itEnv) do(t *testing.T, base, method, path, body string, hdr map[string]string) itResp {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return itResp{}
	}
	e.mu.Lock()
	e.reqID++
	reqID := fmt.Sprintf("it-%s-%d", e.mode, e.reqID)
	e.mu.Unlock()
	req.Header.Set("Authorization", "Bearer "+itWriterToken)
	req.Header.Set(headerRequestID, reqID)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return itResp{}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("%s %s: reading the body: %v", method, path, err)
	}
	r := itResp{base: base, req: req, reqHdr: hdr, status: resp.StatusCode, hdr: resp.Header, body: raw}
	if len(raw) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&r.json); err != nil {
			t.Errorf("%s %s: %d with a body that is not JSON: %s", method, path, resp.StatusCode, trunc(raw))
		}
	}
	// Every response of a /v1 route carries the request id it was sent. (Not checked for the
	// catch-all's 404 and 405, which answer without one.)
	if sent, got := req.Header.Get(headerRequestID), resp.Header.Get(headerRequestID); got != sent && validRequestID(sent) && e.pattern(method, req.URL.RequestURI()) != "/" {
		t.Errorf("%s %s: X-Request-Id %q, sent %q", method, path, got, sent)
	}
	cons := req.URL.Query().Get(paramConsistency)
	if cons == "" {
		cons = req.Header.Get(headerConsistency)
	}
	if cons == "" {
		cons = "eventual"
	}
	e.mu.Lock()
	e.log = append(e.log, itRecord{method: method, path: req.URL.RequestURI(), consistency: cons, status: r.status, code: r.code()})
	e.mu.Unlock()
	return r
}

// pattern returns the pattern of the server's route that serves method and uri ("/": none).
func (e *itEnv) pattern(method, uri string) string {
	_, pattern := e.srv.Handler().(*http.ServeMux).Handler(httptest.NewRequest(method, uri, nil))
	return pattern
}

func (e *itEnv) records() []itRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.log)
}

func (e *itEnv) run(t *testing.T, steps []itStep) {
	pending := map[string]chan itResp{}
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
		if st.join != "" {
			ch, ok := pending[st.join]
			if !ok {
				t.Fatalf("%s: no background step %q", st.name, st.join)
			}
			delete(pending, st.join)
			e.verify(t, st, <-ch)
			continue
		}
		base := e.base
		if st.server == "twin" {
			base = e.twin
		}
		path, body := e.expand(t, st.path), e.expand(t, st.body)
		hdr := map[string]string{}
		for k, v := range st.hdr {
			hdr[k] = e.expand(t, v)
		}
		if st.bg != "" {
			ch := make(chan itResp, 1)
			pending[st.bg] = ch
			go func() { ch <- e.do(t, base, st.method, path, body, hdr) }()
			continue
		}
		e.verify(t, st, e.do(t, base, st.method, path, body, hdr))
	}
	for name, ch := range pending {
		<-ch
		t.Errorf("background step %s never joined", name)
	}
}

// verify checks a step's response: status, error body and code, content type; then saves the
// step's variables and runs its check.
func (e *itEnv) verify(t *testing.T, st itStep, r itResp) {
	t.Helper()
	if r.req == nil {
		t.Errorf("%s: no response", st.name)
		return
	}
	what := st.name + " (" + r.req.Method + " " + r.req.URL.RequestURI() + ")"
	if r.status != st.want || (st.code != "" && r.code() != st.code) {
		t.Errorf("%s: got %d %s, want %d %s", what, r.status, trunc(r.body), st.want, st.code)
		return
	}
	if r.status >= 400 && (r.code() == "" || r.get("message") == nil) {
		t.Errorf("%s: error %d without an error body: %s", what, r.status, trunc(r.body))
	}
	if r.status == http.StatusNoContent {
		if len(r.body) != 0 {
			t.Errorf("%s: 204 with a body %q", what, r.body)
		}
	} else if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
	for name, from := range st.save {
		var v string
		switch {
		case strings.HasPrefix(from, "header:"):
			v = r.hdr.Get(strings.TrimPrefix(from, "header:"))
		case strings.HasPrefix(from, "json:"):
			if x := r.get(strings.TrimPrefix(from, "json:")); x != nil {
				v = fmt.Sprint(x)
			}
		}
		if v == "" {
			t.Errorf("%s: nothing to save as %s from %s", what, name, from)
		}
		e.vars[name] = v
	}
	if st.check != nil {
		st.check(t, e, r)
	}
}

// verifyCoverage checks what the scenario as a whole must have done: every /v1 route was
// called, every error code of errorTable but internal was answered, each consistency was used
// by a successful row read and write, and nothing was a 500 or logged as a bug.
func (e *itEnv) verifyCoverage(t *testing.T) {
	hit := map[string]bool{}
	codes := map[string]bool{}
	cons := map[string]bool{}
	for _, rec := range e.records() {
		if rec.status >= 500 && rec.status != http.StatusServiceUnavailable {
			t.Errorf("%s %s answered %d %s", rec.method, rec.path, rec.status, rec.code)
		}
		if rec.code == codeInternal {
			t.Errorf("%s %s answered code internal", rec.method, rec.path)
		}
		pattern := e.pattern(rec.method, rec.path)
		hit[pattern] = true
		codes[rec.code] = true
		if strings.Contains(pattern, "/rows/") && rec.status < 300 {
			cons[rec.method+" "+rec.consistency] = true
		}
	}
	for _, rt := range e.srv.v1Routes() {
		if !hit[rt.pattern] {
			t.Errorf("route %s was never called", rt.pattern)
		}
	}
	for _, ec := range errorTable() {
		if ec.code != codeInternal && !codes[ec.code] {
			t.Errorf("error code %s (%d) was never answered", ec.code, ec.status)
		}
	}
	for _, m := range []string{"GET", "PUT", "PATCH", "DELETE"} {
		for _, c := range []string{"eventual", "critical", "atomic"} {
			if !cons[m+" "+c] {
				t.Errorf("no successful %s of a row with consistency %s", m, c)
			}
		}
	}
	if logs := e.logs.String(); strings.Contains(logs, "a bug") {
		t.Errorf("the server logged a bug:\n%s", logs)
	}
}
