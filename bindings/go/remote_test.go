package diffgentor_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

const (
	remoteKey     = "sk-test-go-0123456789abcdef"
	remoteModel   = "dg-test-image-model"
	remotePrompt  = "a red fox in the snow"
	remoteRevised = "A red fox standing in fresh snow, revised by the server"
)

// servedImage is what the fake service draws: 5x3, every pixel different.
func servedImage() *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, 5, 3))
	for y := 0; y < 3; y++ {
		for x := 0; x < 5; x++ {
			img.Set(x, y, color.RGBA{uint8(40 * x), uint8(80 * y), uint8(7 + x*y*11), 255})
		}
	}
	return img
}

// openAIRequest is one request as the fake service saw it.
type openAIRequest struct {
	method, path, auth, contentType string
	body                            map[string]any
	rawBody                         string
}

// fakeOpenAI is an OpenAI Images server: POST /v1/images/generations answers with the next
// status of its script (the last one repeats); 200 is one PNG as b64_json with a revised prompt.
type fakeOpenAI struct {
	*httptest.Server
	t        *testing.T
	png64    string
	mu       sync.Mutex
	script   []int
	requests []openAIRequest
}

func newFakeOpenAI(t *testing.T) *fakeOpenAI {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, servedImage()); err != nil {
		t.Fatal(err)
	}
	f := &fakeOpenAI{t: t, png64: base64.StdEncoding.EncodeToString(buf.Bytes()), script: []int{200}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.handle))
	t.Cleanup(f.Close)
	return f
}

// serve sets the statuses of the next requests and forgets the ones recorded.
func (f *fakeOpenAI) serve(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = statuses
	f.requests = nil
}

func (f *fakeOpenAI) seen() []openAIRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]openAIRequest(nil), f.requests...)
}

func (f *fakeOpenAI) handle(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	req := openAIRequest{method: r.Method, path: r.URL.Path, auth: r.Header.Get("Authorization"),
		contentType: r.Header.Get("Content-Type"), rawBody: string(raw)}
	if err := json.Unmarshal(raw, &req.body); err != nil {
		f.t.Errorf("the request body is not a JSON object: %v: %q", err, raw)
	}
	if r.ContentLength != int64(len(raw)) {
		f.t.Errorf("content-length %d for a %d-byte body", r.ContentLength, len(raw))
	}
	f.mu.Lock()
	status := f.script[len(f.script)-1]
	if len(f.requests) < len(f.script) {
		status = f.script[len(f.requests)]
	}
	f.requests = append(f.requests, req)
	f.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	switch status {
	case http.StatusOK:
		fmt.Fprintf(w, `{"created": 1, "data": [{"b64_json": %q, "revised_prompt": %q}]}`, f.png64, remoteRevised)
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After-Ms", "20")
		w.WriteHeader(status)
		fmt.Fprint(w, `{"error": {"message": "Rate limit reached for images per minute", "type": "requests", "code": "rate_limit_exceeded"}}`)
	case http.StatusBadRequest:
		// OpenAI's safety system.
		w.WriteHeader(status)
		fmt.Fprint(w, `{"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error", "code": "moderation_blocked"}}`)
	case http.StatusUnauthorized:
		// Some servers repeat what they got: the library must not pass the key on.
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error": {"message": "Incorrect API key provided: %s", "type": "invalid_request_error", "code": "invalid_api_key"}}`, req.auth)
	default:
		w.WriteHeader(status)
		fmt.Fprint(w, `{"error": {"message": "the image server exploded", "type": "server_error"}}`)
	}
}

func newRemote(t *testing.T, f *fakeOpenAI, opts ...diffgentor.RemoteOption) *diffgentor.Pipeline {
	t.Helper()
	all := append([]diffgentor.RemoteOption{
		diffgentor.WithBaseURL(f.URL + "/v1"),
		diffgentor.WithAPIKey(remoteKey),
		diffgentor.WithModel(remoteModel),
		diffgentor.WithTimeout(30 * time.Second),
	}, opts...)
	p, err := diffgentor.NewRemote("openai", all...)
	if err != nil {
		t.Fatalf("NewRemote: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// wantRemoteCode is wantCode, and the error text never shows the API key.
func wantRemoteCode(t *testing.T, err error, code diffgentor.ErrorCode, parts ...string) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), remoteKey) {
		t.Errorf("the error shows the API key: %v", err)
	}
	wantCode(t, err, code, parts...)
}

func TestRemoteGenerate(t *testing.T) {
	f := newFakeOpenAI(t)
	p := newRemote(t, f, diffgentor.WithMaxRetries(0))
	if k := p.Kind(); k != "openai" {
		t.Errorf("Kind() = %q, want openai", k)
	}
	var reports []diffgentor.ProgressInfo
	res, err := p.GenerateResult(context.Background(), diffgentor.Params{
		Prompt:     remotePrompt,
		OnProgress: func(pi diffgentor.ProgressInfo) bool { reports = append(reports, pi); return true },
	})
	if err != nil {
		t.Fatalf("GenerateResult: %v", err)
	}

	reqs := f.seen()
	if len(reqs) != 1 {
		t.Fatalf("the server got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.method != "POST" || r.path != "/v1/images/generations" {
		t.Errorf("request %s %s, want POST /v1/images/generations", r.method, r.path)
	}
	if r.auth != "Bearer "+remoteKey {
		t.Errorf("Authorization %q", r.auth)
	}
	if !strings.HasPrefix(r.contentType, "application/json") {
		t.Errorf("Content-Type %q", r.contentType)
	}
	if r.body["prompt"] != remotePrompt || r.body["model"] != remoteModel {
		t.Errorf("body %s lacks the prompt or the model", r.rawBody)
	}

	if len(res.Images) != 1 {
		t.Fatalf("got %d images, want 1", len(res.Images))
	}
	want := servedImage()
	got := res.Images[0]
	if got.Bounds() != want.Bounds() {
		t.Fatalf("image bounds %v, the server sent %v", got.Bounds(), want.Bounds())
	}
	for y := 0; y < 3; y++ {
		for x := 0; x < 5; x++ {
			if got.RGBAAt(x, y) != want.RGBAAt(x, y) {
				t.Errorf("pixel (%d, %d) = %v, the server sent %v", x, y, got.RGBAAt(x, y), want.RGBAAt(x, y))
			}
		}
	}

	md := res.Metadata
	t.Logf("metadata: %s", md.Raw)
	if md.Model != remoteModel {
		t.Errorf("Metadata.Model = %q, want %q", md.Model, remoteModel)
	}
	if len(md.RevisedPrompts) != 1 || md.RevisedPrompts[0] != remoteRevised {
		t.Errorf("Metadata.RevisedPrompts = %q, want [%q] (raw %s)", md.RevisedPrompts, remoteRevised, md.Raw)
	}
	if len(md.Ignored) != 0 {
		t.Errorf("Metadata.Ignored = %q without best effort", md.Ignored)
	}
	var raw map[string]any
	if err := json.Unmarshal(md.Raw, &raw); err != nil {
		t.Errorf("Metadata.Raw is not a JSON object: %v: %s", err, md.Raw)
	}
	if bytes.Contains(md.Raw, []byte(remoteKey)) {
		t.Errorf("the metadata shows the API key: %s", md.Raw)
	}

	if len(reports) == 0 {
		t.Fatal("OnProgress was never called")
	}
	last := reports[len(reports)-1]
	if last.Stage != 1 || last.Stages != 1 || last.Step < 1 || last.Step > last.Total {
		t.Errorf("last progress report %+v, want stage 1 of 1 and 1 <= step <= total", last)
	}
}

func TestRemoteBestEffort(t *testing.T) {
	f := newFakeOpenAI(t)
	p := newRemote(t, f)
	params := diffgentor.Params{Prompt: remotePrompt, NegativePrompt: "blurry, watermark"}
	_, err := p.Generate(context.Background(), params)
	wantRemoteCode(t, err, diffgentor.ErrUnsupported, "negative_prompt")
	if n := len(f.seen()); n != 0 {
		t.Errorf("an unsupported request was sent (%d requests)", n)
	}

	params.BestEffort = true
	res, err := p.GenerateResult(context.Background(), params)
	if err != nil {
		t.Fatalf("best effort: %v", err)
	}
	if len(res.Images) != 1 {
		t.Fatalf("best effort: %d images", len(res.Images))
	}
	found := false
	for _, field := range res.Metadata.Ignored {
		found = found || field == "negative_prompt"
	}
	if !found {
		t.Errorf("Metadata.Ignored = %q, want it to list negative_prompt (raw %s)", res.Metadata.Ignored, res.Metadata.Raw)
	}
	reqs := f.seen()
	if len(reqs) != 1 || strings.Contains(reqs[0].rawBody, "blurry") {
		t.Errorf("best effort: want one request without the negative prompt, got %d: %v", len(reqs), reqs)
	}
}

func TestRemoteRetry(t *testing.T) {
	f := newFakeOpenAI(t)
	p := newRemote(t, f, diffgentor.WithMaxRetries(1))

	// A 429 (retry-after-ms 20) then a success: one successful request.
	f.serve(http.StatusTooManyRequests, http.StatusOK)
	res, err := p.GenerateResult(context.Background(), diffgentor.Params{Prompt: remotePrompt})
	if err != nil {
		t.Fatalf("429 then 200: %v", err)
	}
	if len(res.Images) != 1 || len(f.seen()) != 2 {
		t.Errorf("429 then 200: %d images from %d requests, want 1 from 2", len(res.Images), len(f.seen()))
	}

	// Two 429s spend the single retry.
	f.serve(http.StatusTooManyRequests)
	_, err = p.Generate(context.Background(), diffgentor.Params{Prompt: remotePrompt})
	wantRemoteCode(t, err, diffgentor.ErrRateLimited, "429")
	if !errors.Is(err, diffgentor.ErrRateLimited) || errors.Is(err, diffgentor.ErrRemote) {
		t.Errorf("%v should match ErrRateLimited only", err)
	}
	if n := len(f.seen()); n != 2 {
		t.Errorf("429 twice with max_retries 1: %d requests, want 2", n)
	}
}

func TestRemoteErrors(t *testing.T) {
	f := newFakeOpenAI(t)
	p := newRemote(t, f, diffgentor.WithMaxRetries(0))
	ctx := context.Background()
	params := diffgentor.Params{Prompt: remotePrompt}

	f.serve(http.StatusInternalServerError)
	_, err := p.Generate(ctx, params)
	wantRemoteCode(t, err, diffgentor.ErrRemote, "500", "the image server exploded")
	if n := len(f.seen()); n != 1 {
		t.Errorf("500 with max_retries 0: %d requests, want 1", n)
	}

	f.serve(http.StatusUnauthorized)
	_, err = p.Generate(ctx, params)
	wantRemoteCode(t, err, diffgentor.ErrRemote, "401")

	f.serve(http.StatusBadRequest)
	_, err = p.Generate(ctx, params)
	wantRemoteCode(t, err, diffgentor.ErrRefused, "safety system")

	// A context already cancelled: nothing is sent.
	f.serve(http.StatusOK)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = p.Generate(cctx, params)
	if !errors.Is(err, diffgentor.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if n := len(f.seen()); n != 0 {
		t.Errorf("a cancelled request was sent (%d requests)", n)
	}
	// Progress and OnProgress together are refused.
	_, err = p.Generate(ctx, diffgentor.Params{
		Progress:   func(int, int, time.Duration) bool { return true },
		OnProgress: func(diffgentor.ProgressInfo) bool { return true },
	})
	wantCode(t, err, diffgentor.ErrInvalidArg, "OnProgress")

	// The sentinels: distinct codes, the C values, and the names.
	for code, want := range map[diffgentor.ErrorCode]int{
		diffgentor.ErrRemote: 10, diffgentor.ErrRateLimited: 11, diffgentor.ErrTimeout: 12, diffgentor.ErrRefused: 13,
	} {
		if int(code) != want || !strings.HasPrefix(code.String(), "DG_ERROR_") {
			t.Errorf("%v = %d, want %d", code, int(code), want)
		}
		e := fmt.Errorf("wrapped: %w", &diffgentor.Error{Code: code, Message: "x"})
		if !errors.Is(e, code) || errors.Is(e, diffgentor.ErrBackend) {
			t.Errorf("errors.Is on a wrapped %v", code)
		}
	}

	// Close: Kind is "" and Generate fails with ErrClosed.
	p.Close()
	if k := p.Kind(); k != "" {
		t.Errorf("Kind() after Close = %q", k)
	}
	_, err = p.Generate(ctx, params)
	if !errors.Is(err, diffgentor.ErrClosed) {
		t.Errorf("Generate after Close: %v", err)
	}
}

func TestRemoteTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer slow.Close()
	defer close(release)
	p, err := diffgentor.NewRemote("openai", diffgentor.WithBaseURL(slow.URL+"/v1"), diffgentor.WithAPIKey(remoteKey),
		diffgentor.WithTimeout(300*time.Millisecond), diffgentor.WithMaxRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start := time.Now()
	_, err = p.Generate(context.Background(), diffgentor.Params{Prompt: remotePrompt})
	wantRemoteCode(t, err, diffgentor.ErrTimeout)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a 300ms timeout took %v", d)
	}
}

func TestRemoteOptions(t *testing.T) {
	f := newFakeOpenAI(t)
	base := []diffgentor.RemoteOption{diffgentor.WithBaseURL(f.URL + "/v1"), diffgentor.WithAPIKey(remoteKey)}
	try := func(backend string, opts ...diffgentor.RemoteOption) error {
		p, err := diffgentor.NewRemote(backend, append(append([]diffgentor.RemoteOption(nil), base...), opts...)...)
		if err == nil {
			p.Close()
		}
		return err
	}
	wantRemoteCode(t, try("dall-e-over-carrier-pigeon"), diffgentor.ErrInvalidArg, "dall-e-over-carrier-pigeon")
	wantRemoteCode(t, try("openai", diffgentor.WithOption("no_such_option", "1")), diffgentor.ErrInvalidArg, "no_such_option")
	wantRemoteCode(t, try("openai", diffgentor.WithOption("max_retries", "many")), diffgentor.ErrInvalidArg, "max_retries")
	wantRemoteCode(t, try("openai", diffgentor.WithBaseURL("ftp://127.0.0.1/v1")), diffgentor.ErrInvalidArg, "ftp://127.0.0.1/v1")
	wantRemoteCode(t, try("openai", diffgentor.WithMaxRetries(-1)), diffgentor.ErrInvalidArg, "max_retries")
	wantRemoteCode(t, try("openai", diffgentor.WithTimeout(0)), diffgentor.ErrInvalidArg, "timeout")
	wantRemoteCode(t, try("open\x00ai"), diffgentor.ErrInvalidArg, "NUL")
	// A NUL in the key is refused without quoting the key.
	err := try("openai", diffgentor.WithAPIKey(remoteKey+"\x00"))
	wantRemoteCode(t, err, diffgentor.ErrInvalidArg, "API key")
	// A gemini pipeline is made without sending anything.
	g, err := diffgentor.NewRemote("gemini", diffgentor.WithBaseURL(f.URL), diffgentor.WithAPIKey(remoteKey))
	if err != nil {
		t.Fatalf("NewRemote(gemini): %v", err)
	}
	if k := g.Kind(); k != "gemini" {
		t.Errorf("gemini Kind() = %q", k)
	}
	g.Close()
	if n := len(f.seen()); n != 0 {
		t.Errorf("making pipelines sent %d requests", n)
	}
	// An empty value removes the option again: the bad value set before no longer counts.
	if err := try("openai", diffgentor.WithOption("max_retries", "many"), diffgentor.WithOption("max_retries", "")); err != nil {
		t.Errorf("an option removed by an empty value still counted: %v", err)
	}
}

// A local pipeline is of kind "local" and reports empty metadata.
func TestLocalKindAndMetadata(t *testing.T) {
	p := loadPipeline(t, "digits")
	if k := p.Kind(); k != "local" {
		t.Errorf("Kind() = %q, want local", k)
	}
	var reports []diffgentor.ProgressInfo
	res, err := p.GenerateResult(context.Background(), diffgentor.Params{Steps: 2, Seed: diffgentor.Uint64(1),
		OnProgress: func(pi diffgentor.ProgressInfo) bool { reports = append(reports, pi); return true }})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Metadata.Raw) != "{}" || res.Metadata.Model != "" || res.Metadata.Ignored != nil {
		t.Errorf("local metadata %+v, want {}", res.Metadata)
	}
	if len(reports) != 2 {
		t.Fatalf("OnProgress called %d times for 2 steps: %+v", len(reports), reports)
	}
	if fmt.Sprint(reports) != fmt.Sprint([]diffgentor.ProgressInfo{
		{Step: 1, Total: 2, Stage: 1, Stages: 1, Elapsed: reports[0].Elapsed},
		{Step: 2, Total: 2, Stage: 1, Stages: 1, Elapsed: reports[1].Elapsed},
	}) {
		t.Errorf("OnProgress reports %+v, want steps 1 and 2 of 2, stage 1 of 1", reports)
	}
}
