package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/musicd/musicd/state/queue"
)

// Queues is what the queue routes need from the work queue (*queue.Service). Errors wrap the
// state package's sentinels and queue.ErrLeaseExpired, mapped through errorTable.
type Queues interface {
	CreateQueue(ctx context.Context, d queue.Def) (queue.Def, error)
	DropQueue(ctx context.Context, namespace, name string) error
	Queue(ctx context.Context, namespace, name string) (queue.Def, error)
	Queues(ctx context.Context, namespace string) ([]queue.Def, error)
	Enqueue(ctx context.Context, namespace, name string, nj queue.NewJob) (queue.Job, bool, error)
	Peek(ctx context.Context, namespace, name string, limit int) ([]queue.Job, error)
	Claim(ctx context.Context, namespace, name, worker string, lease, wait time.Duration) (*queue.Job, error)
	Complete(ctx context.Context, namespace, name, id, token string) error
	Release(ctx context.Context, namespace, name, id, token string, delay time.Duration, errMsg string) (queue.Job, error)
	Extend(ctx context.Context, namespace, name, id, token string, lease time.Duration) (queue.Job, error)
	Dead(ctx context.Context, namespace, name, page string, limit int) ([]queue.Job, string, error)
	Retry(ctx context.Context, namespace, name, id string) (queue.Job, error)
	// Job, UpdateJob and DeleteJob address a job by id; a claimed job cannot be changed or
	// deleted (queue.ErrClaimed). Jobs lists every job of a small queue (at most max).
	Job(ctx context.Context, namespace, name, id string) (queue.Job, error)
	UpdateJob(ctx context.Context, namespace, name, id string, ch queue.JobChange) (queue.Job, error)
	DeleteJob(ctx context.Context, namespace, name, id string) (queue.Job, error)
	Jobs(ctx context.Context, namespace, name string, max int) ([]queue.Job, error)
}

// queueRoutes are the routes of the work queue (/v1/queues/{ns}/...): a queue belongs to a
// namespace, which tokens grant like a keyspace.
func (s *Server) queueRoutes() []v1Route {
	return []v1Route{
		{pattern: "GET /v1/queues/{ns}", h: s.listQueues, queue: true},
		{pattern: "POST /v1/queues/{ns}", h: s.createQueue, queue: true},
		{pattern: "GET /v1/queues/{ns}/{queue}", h: s.getQueue, queue: true},
		{pattern: "DELETE /v1/queues/{ns}/{queue}", h: s.dropQueue, queue: true},
		{pattern: "POST /v1/queues/{ns}/{queue}/jobs", h: s.enqueue, queue: true},
		{pattern: "GET /v1/queues/{ns}/{queue}/jobs", h: s.peek, queue: true, params: []string{"limit"}},
		{pattern: "GET /v1/queues/{ns}/{queue}/jobs/{id}", h: s.getJob, queue: true},
		{pattern: "PATCH /v1/queues/{ns}/{queue}/jobs/{id}", h: s.updateJob, queue: true},
		{pattern: "DELETE /v1/queues/{ns}/{queue}/jobs/{id}", h: s.deleteJob, queue: true},
		{pattern: "POST /v1/queues/{ns}/{queue}/claim", h: s.claim, queue: true},
		{pattern: "POST /v1/queues/{ns}/{queue}/jobs/{id}/complete", h: s.completeJob, queue: true},
		{pattern: "POST /v1/queues/{ns}/{queue}/jobs/{id}/release", h: s.releaseJob, queue: true},
		{pattern: "POST /v1/queues/{ns}/{queue}/jobs/{id}/extend", h: s.extendJob, queue: true},
		{pattern: "GET /v1/queues/{ns}/{queue}/dead", h: s.deadJobs, queue: true, params: []string{"limit", "page"}},
		{pattern: "POST /v1/queues/{ns}/{queue}/dead/{id}/retry", h: s.retryJob, queue: true},
	}
}

// queueJSON is a queue's definition as the API shows it.
type queueJSON struct {
	Namespace   string         `json:"namespace"`
	Name        string         `json:"name"`
	Priorities  int            `json:"priorities"`
	Shards      int            `json:"shards"`
	MaxAttempts int            `json:"max_attempts"`
	Lease       queue.Duration `json:"lease"`
	MaxPayload  int            `json:"max_payload_bytes"`
	DedupWindow queue.Duration `json:"dedup_window"`
	Created     string         `json:"created,omitempty"`
}

func toQueueJSON(d queue.Def) queueJSON {
	return queueJSON{d.Namespace, d.Name, d.Priorities, d.Shards, d.MaxAttempts, d.Lease, d.MaxPayload, d.DedupWindow,
		micros(d.Created)}
}

func micros(us int64) string {
	if us == 0 {
		return ""
	}
	return time.UnixMicro(us).UTC().Format(time.RFC3339Nano)
}

// jobJSON is a job as the API shows it. Token and LeaseUntil only while claimed.
type jobJSON struct {
	ID         string          `json:"id"`
	Priority   int             `json:"priority"`
	Payload    json.RawMessage `json:"payload,omitempty"`
	Attempts   int             `json:"attempts"`
	Enqueued   string          `json:"enqueued,omitempty"`
	Due        string          `json:"due,omitempty"`
	Holder     string          `json:"holder,omitempty"`
	Token      string          `json:"token,omitempty"`
	LeaseUntil string          `json:"lease_until,omitempty"`
	Error      string          `json:"error,omitempty"`
	Died       string          `json:"died,omitempty"`
}

func toJobJSON(j queue.Job) jobJSON {
	out := jobJSON{ID: j.ID, Priority: j.Priority, Attempts: j.Attempts, Enqueued: micros(j.Enqueued), Due: micros(j.Due),
		Holder: j.Holder, Token: j.Token, LeaseUntil: micros(j.LeaseUntil), Error: j.Error, Died: micros(j.Died)}
	if len(j.Payload) > 0 {
		out.Payload = json.RawMessage(j.Payload)
	}
	return out
}

func toJobsJSON(js []queue.Job) []jobJSON {
	out := make([]jobJSON, 0, len(js))
	for _, j := range js {
		out = append(out, toJobJSON(j))
	}
	return out
}

// inQueue authorizes the request for the namespace its path names and runs fn with the
// operation's context (bounded by RequestTimeout plus wait).
func (s *Server) inQueue(r *http.Request, c *call, write bool, wait time.Duration, fn func(ctx context.Context, ns, name string) error) error {
	ns := r.PathValue("ns")
	if err := c.p.authorize(ns, write); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout+wait)
	defer cancel()
	return fn(ctx, ns, r.PathValue("queue"))
}

func (s *Server) listQueues(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inQueue(r, c, false, 0, func(ctx context.Context, ns, _ string) error {
		ds, err := s.deps.Queues.Queues(ctx, ns)
		if err != nil {
			return err
		}
		out := make([]queueJSON, 0, len(ds))
		for _, d := range ds {
			out = append(out, toQueueJSON(d))
		}
		writeJSON(w, http.StatusOK, map[string]any{"queues": out})
		return nil
	})
}

func (s *Server) createQueue(w http.ResponseWriter, r *http.Request, c *call) error {
	var body queueJSON
	if err := s.decodeBody(w, r, &body, true); err != nil {
		return err
	}
	if body.Created != "" {
		return invalid("created is set by musicd")
	}
	ns := r.PathValue("ns")
	if body.Namespace != "" && body.Namespace != ns {
		return invalid("namespace %q in the body differs from %q in the path", body.Namespace, ns)
	}
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, _ string) error {
		d, err := s.deps.Queues.CreateQueue(ctx, queue.Def{Namespace: ns, Name: body.Name, Priorities: body.Priorities,
			Shards: body.Shards, MaxAttempts: body.MaxAttempts, Lease: body.Lease, MaxPayload: body.MaxPayload, DedupWindow: body.DedupWindow})
		if err != nil {
			return err
		}
		w.Header().Set("Location", "/v1/queues/"+ns+"/"+d.Name)
		writeJSON(w, http.StatusCreated, toQueueJSON(d))
		return nil
	})
}

func (s *Server) getQueue(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inQueue(r, c, false, 0, func(ctx context.Context, ns, name string) error {
		d, err := s.deps.Queues.Queue(ctx, ns, name)
		return answer(w, http.StatusOK, toQueueJSON(d), err)
	})
}

func (s *Server) dropQueue(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, name string) error {
		return answer(w, http.StatusNoContent, nil, s.deps.Queues.DropQueue(ctx, ns, name))
	})
}

// enqueueBody is a new job. payload is any JSON value.
type enqueueBody struct {
	ID       string          `json:"id"`
	Payload  json.RawMessage `json:"payload"`
	Priority int             `json:"priority"`
	Delay    queue.Duration  `json:"delay"`
}

func (s *Server) enqueue(w http.ResponseWriter, r *http.Request, c *call) error {
	var body enqueueBody
	if err := s.decodeBody(w, r, &body, true); err != nil {
		return err
	}
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, name string) error {
		j, dup, err := s.deps.Queues.Enqueue(ctx, ns, name, queue.NewJob{ID: body.ID, Payload: body.Payload,
			Priority: body.Priority, Delay: time.Duration(body.Delay)})
		if err != nil {
			return err
		}
		if dup {
			writeJSON(w, http.StatusOK, map[string]any{"id": j.ID, "duplicate": true})
			return nil
		}
		writeJSON(w, http.StatusCreated, map[string]any{"id": j.ID, "duplicate": false, "due": micros(j.Due)})
		return nil
	})
}

// limitParam parses ?limit= (default def, at most queue.MaxPeek).
func limitParam(c *call, def int) (int, error) {
	v := c.query.Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > queue.MaxPeek {
		return 0, invalid("limit must be an integer 1-%d, not %q", queue.MaxPeek, v)
	}
	return n, nil
}

func (s *Server) peek(w http.ResponseWriter, r *http.Request, c *call) error {
	limit, err := limitParam(c, 10)
	if err != nil {
		return err
	}
	return s.inQueue(r, c, false, 0, func(ctx context.Context, ns, name string) error {
		js, err := s.deps.Queues.Peek(ctx, ns, name, limit)
		return answer(w, http.StatusOK, map[string]any{"jobs": toJobsJSON(js)}, err)
	})
}

// claimBody asks for a job: worker names the claimant (shown as holder), lease its lease (the
// queue's default when absent), wait how long to wait for one (0: answer at once).
type claimBody struct {
	Worker string         `json:"worker"`
	Lease  queue.Duration `json:"lease"`
	Wait   queue.Duration `json:"wait"`
}

func (s *Server) claim(w http.ResponseWriter, r *http.Request, c *call) error {
	var body claimBody
	if err := s.decodeBody(w, r, &body, false); err != nil {
		return err
	}
	if body.Wait < 0 {
		return invalid("wait must not be negative")
	}
	return s.inQueue(r, c, true, time.Duration(body.Wait), func(ctx context.Context, ns, name string) error {
		j, err := s.deps.Queues.Claim(ctx, ns, name, body.Worker, time.Duration(body.Lease), time.Duration(body.Wait))
		if err != nil {
			return err
		}
		if j == nil {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		writeJSON(w, http.StatusOK, toJobJSON(*j))
		return nil
	})
}

// tokenBody is the claim a job operation acts under, with what release and extend take.
type tokenBody struct {
	Token string         `json:"token"`
	Delay queue.Duration `json:"delay"`
	Error string         `json:"error"`
	Lease queue.Duration `json:"lease"`
}

func (s *Server) jobCall(w http.ResponseWriter, r *http.Request, c *call, allowed func(tokenBody) error,
	fn func(ctx context.Context, ns, name, id string, b tokenBody) error) error {
	var body tokenBody
	if err := s.decodeBody(w, r, &body, true); err != nil {
		return err
	}
	if body.Token == "" {
		return invalid("token is required: the token of the claim")
	}
	if err := allowed(body); err != nil {
		return err
	}
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, name string) error {
		return fn(ctx, ns, name, r.PathValue("id"), body)
	})
}

func (s *Server) completeJob(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.jobCall(w, r, c, func(b tokenBody) error {
		if b.Delay != 0 || b.Error != "" || b.Lease != 0 {
			return invalid("complete takes only token")
		}
		return nil
	}, func(ctx context.Context, ns, name, id string, b tokenBody) error {
		return answer(w, http.StatusNoContent, nil, s.deps.Queues.Complete(ctx, ns, name, id, b.Token))
	})
}

func (s *Server) releaseJob(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.jobCall(w, r, c, func(b tokenBody) error {
		if b.Lease != 0 {
			return invalid("release takes token, delay and error")
		}
		return nil
	}, func(ctx context.Context, ns, name, id string, b tokenBody) error {
		j, err := s.deps.Queues.Release(ctx, ns, name, id, b.Token, time.Duration(b.Delay), b.Error)
		return answer(w, http.StatusOK, toJobJSON(j), err)
	})
}

func (s *Server) extendJob(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.jobCall(w, r, c, func(b tokenBody) error {
		if b.Delay != 0 || b.Error != "" {
			return invalid("extend takes token and lease")
		}
		return nil
	}, func(ctx context.Context, ns, name, id string, b tokenBody) error {
		j, err := s.deps.Queues.Extend(ctx, ns, name, id, b.Token, time.Duration(b.Lease))
		return answer(w, http.StatusOK, toJobJSON(j), err)
	})
}

func (s *Server) deadJobs(w http.ResponseWriter, r *http.Request, c *call) error {
	limit, err := limitParam(c, 100)
	if err != nil {
		return err
	}
	return s.inQueue(r, c, false, 0, func(ctx context.Context, ns, name string) error {
		js, next, err := s.deps.Queues.Dead(ctx, ns, name, c.query.Get("page"), limit)
		body := map[string]any{"jobs": toJobsJSON(js)}
		if next != "" {
			body["next"] = next
		}
		return answer(w, http.StatusOK, body, err)
	})
}

func (s *Server) retryJob(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, name string) error {
		j, err := s.deps.Queues.Retry(ctx, ns, name, r.PathValue("id"))
		return answer(w, http.StatusOK, toJobJSON(j), err)
	})
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inQueue(r, c, false, 0, func(ctx context.Context, ns, name string) error {
		j, err := s.deps.Queues.Job(ctx, ns, name, r.PathValue("id"))
		return answer(w, http.StatusOK, toJobJSON(j), err)
	})
}

// jobChangeBody changes a ready or dead job: payload (any JSON value) and priority, each
// unchanged when absent.
type jobChangeBody struct {
	Payload  json.RawMessage `json:"payload"`
	Priority *int            `json:"priority"`
}

func (s *Server) updateJob(w http.ResponseWriter, r *http.Request, c *call) error {
	var body jobChangeBody
	if err := s.decodeBody(w, r, &body, true); err != nil {
		return err
	}
	if body.Payload == nil && body.Priority == nil {
		return invalid("give payload, priority or both")
	}
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, name string) error {
		j, err := s.deps.Queues.UpdateJob(ctx, ns, name, r.PathValue("id"), queue.JobChange{Payload: body.Payload, Priority: body.Priority})
		return answer(w, http.StatusOK, toJobJSON(j), err)
	})
}

func (s *Server) deleteJob(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inQueue(r, c, true, 0, func(ctx context.Context, ns, name string) error {
		_, err := s.deps.Queues.DeleteJob(ctx, ns, name, r.PathValue("id"))
		return answer(w, http.StatusNoContent, nil, err)
	})
}
