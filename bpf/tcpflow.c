// TCP flows for Vigil's netflow source, loaded by BCC (agent/netflow/probe.py).
//
// Reads no kernel struct through headers: the 6.1 headers BCC compiles against have the wrong offsets on
// newer kernels. Everything comes from tracepoint fields (formats from the running kernel's tracefs) and
// from the sock_ops context (a stable UAPI the verifier rewrites).
//
//  tcpflow_ops    sock_ops on the cgroup v2 root (every socket of the node, every network namespace):
//                 - connection opens by direction and failed connects, per peer class;
//                 - per-socket state in socket-local storage, which lives and dies with the socket and is
//                   cloned from a listener to the sockets it accepts (so it needs no capacity of its own);
//                 - the list of open sockets `live` (namespace, addresses, ports): user space reads their
//                   tcp_info with one inet_diag lookup each instead of dumping every socket of every namespace.
//                   An array of slots user space maps into memory, not a hash: a socket claims a free slot with
//                   one compare-and-swap and frees it with one store, where a hash insert and delete took a
//                   bucket lock and the element free list each (about 1 us of the 2.7 us a connection cost);
//                 - at close, the socket's exact totals (bytes_acked, bytes_received, total_retrans, segs_out,
//                   srtt_us): into the in-kernel aggregate `agg` (class, cgroup) or, when user space may have
//                   read the socket live, into `records` (one entry per socket, drained by user space, which
//                   subtracts what it already counted). See agent/netflow/accounting.py.
//                 Nothing runs per packet or per send.
//
//  tracepoint     sock:inet_sock_set_state, only where sock_ops cannot run (no cgroup v2, verifier refusal):
//                 connection opens and failed connects, stateless. Beside sock_ops it would only cost (about
//                 1 us per connection on this machine) and tell nothing new.
//
// Peer classes: user space fills `port_class` (a port of interest, remote then local) and `policy_cidrs`
// (longest prefix; IPv4 as ::ffff:a.b.c.d/96+len). Class 0 is the fallback ("external").
//
// Build-time switches (-D): MAX_CLASSES, AGG_ENTRIES, RECORD_ENTRIES, LIVE_ENTRIES, LIVE_PROBES, CIDR_ENTRIES,
// NO_CURRENT_CGROUP (kernels whose sock_ops may not call bpf_get_current_cgroup_id), NO_SOCK_OPS,
// TRACEPOINT_FALLBACK.

#include <uapi/linux/bpf.h>

#ifndef MAX_CLASSES
#define MAX_CLASSES 32
#endif
#ifndef AGG_ENTRIES
#define AGG_ENTRIES 4096
#endif
#ifndef RECORD_ENTRIES
#define RECORD_ENTRIES 16384
#endif
#ifndef LIVE_ENTRIES
#define LIVE_ENTRIES 65536
#endif
#ifndef LIVE_PROBES
#define LIVE_PROBES 8  // slots tried per socket before it goes unlisted (counted at close only, still exact)
#endif
#ifndef CIDR_ENTRIES
#define CIDR_ENTRIES 1024
#endif

#define RTT_BUCKETS 17  // 16 bounds (microseconds) + overflow; keep in step with decode.RTT_BOUNDS_US

// TCP states (include/net/tcp_states.h; stable numbers, not read through headers).
#define S_ESTABLISHED 1
#define S_SYN_SENT 2
#define S_SYN_RECV 3
#define S_FIN_WAIT1 4
#define S_FIN_WAIT2 5
#define S_CLOSE 7
#define S_CLOSE_WAIT 8
#define S_LAST_ACK 9
#define S_CLOSING 11

#define DIR_ACTIVE 0   // egress: this host connected
#define DIR_PASSIVE 1  // ingress: this host accepted
#define DIR_UNKNOWN 2

// Record flags (decode.REC_*).
#define REC_ORPHAN 1   // no socket storage: the socket was set up by an earlier probe instance

// Counter slots (decode.COUNTERS).
#define C_RECORDS 0
#define C_RECORDS_LOST 1
#define C_AGG_CLOSES 2
#define C_AGG_OVERFLOW 3
#define C_STORAGE_FAIL 4
#define C_ORPHAN_CLOSES 5
#define C_LIVE_OVERFLOW 6
#define C_SLOTS 8

struct cidr_key {
    u32 prefixlen;
    u8 addr[16];
};

struct class_stats {
    u64 opens[2];           // by direction
    u64 connect_failed;     // SYN_SENT -> CLOSE
    u64 closes[2];          // by direction (sockets sock_ops tracked)
    u64 rtt_sum_us;         // smoothed RTT of closed sockets
    u64 rtt_count;          // unused: user space sums the buckets (decode.class_stats)
    u64 rtt_bucket[RTT_BUCKETS];
};

struct agg_key {
    u32 cls;
    u32 pad;
    u64 cgroup;
};

struct totals {
    u64 sent;       // payload bytes acknowledged by the peer (SYN and FIN taken out)
    u64 received;   // payload bytes received in order (FIN taken out)
    u64 retrans;    // retransmitted segments
    u64 segs_out;   // segments sent, retransmissions included
};

struct record {
    struct totals t;
    u64 cgroup;
    u32 srtt_us;
    u8 cls;
    u8 dir;
    u8 flags;
    u8 oldstate;
};

struct sk_state {
    u64 cgroup;       // cgroup v2 id of the task that connected or listened (0: unknown)
    u32 gen_open;     // value of gen[0] when the connection was established
    u32 fw2_rcv_nxt;  // rcv_nxt on entering FIN_WAIT2 (see on_close)
    u8 cls;
    u8 dir;
    u8 tracked;       // set at establishment; a listener's clone carries only its cgroup
    u8 fw2;           // entered FIN_WAIT2
    u8 listed;        // user space may read it while it is open: 2 in `live`, 1 every socket is dumped
    u32 slot;         // its slot in `live` (listed == 2)
};

struct live_sock {
    u64 netns;        // network namespace cookie (SO_NETNS_COOKIE of a socket in the same namespace)
    u64 cgroup;       // as in sk_state (an exact inet_diag lookup does not return socket storage)
    u8 family;
    u8 cls;
    u8 dir;
    u8 pad;
    u16 lport;        // host order
    u16 rport;        // host order
    u8 laddr[16];     // IPv4: the first four bytes
    u8 raddr[16];
};

// A slot of `live`: cookie 0 free, LIVE_BUSY being written; user space reads the cookie before and after the
// rest and skips the slot when they differ (decode.LIVE_SLOT).
struct live_slot {
    u64 cookie;
    struct live_sock s;
};
#define LIVE_BUSY 0xffffffffffffffffULL

BPF_LPM_TRIE(policy_cidrs, struct cidr_key, u8, CIDR_ENTRIES);
// Class + 1 (0: none) of every TCP port, eight ports a word (port p: word p / 8, byte p % 8): an array lookup
// the compiler inlines, where a hash lookup per port was a call and a bucket walk.
BPF_ARRAY(port_class, u64, 8192);
// Per-CPU (summed by user space): every connection bumps them, and a shared line would bounce between CPUs.
BPF_PERCPU_ARRAY(stats, struct class_stats, MAX_CLASSES);
BPF_PERCPU_ARRAY(counters, u64, C_SLOTS);
BPF_ARRAY(gen, u64, 1);  // odd while user space reads live sockets (accounting.py)
BPF_ARRAY(dumping, u32, 1);  // 1: user space dumps every socket (no `live` list needed; all may be seen)
BPF_HASH(agg, struct agg_key, struct totals, AGG_ENTRIES);
BPF_ARRAY(agg_overflow, struct totals, MAX_CLASSES);  // bytes whose (class, cgroup) found no room in agg
BPF_HASH(records, u64, struct record, RECORD_ENTRIES);
BPF_F_TABLE("array", u32, struct live_slot, live, LIVE_ENTRIES, BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(live_cursor, u32, 2);  // [0] where this CPU tries its next slot (each CPU starts elsewhere);
                                        // [1] the slot it freed last, plus one (0: none), tried first: it is
                                        // still in this CPU's cache, where the cursor's next slot is not

// Socket-local storage, cloned to accepted sockets: BCC's BPF_SK_STORAGE with BPF_F_CLONE added.
struct sk_state_table_t {
    int key;
    struct sk_state leaf;
    void *(*sk_storage_get)(void *, void *, int);
    int (*sk_storage_delete)(void *);
    u32 flags;
};
__attribute__((section("maps/sk_storage")))
struct sk_state_table_t sk_state = {.flags = BPF_F_NO_PREALLOC | BPF_F_CLONE};
BPF_ANNOTATE_KV_PAIR(sk_state, int, struct sk_state);

// BCC 0.26 declares this helper as returning u32; the cookie is 64 bits.
static u64 (*get_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

// The value must be in a register here (libbpf's barrier_var): keeps the compiler from turning loads of
// context fields in two branches into one load through a pointer into the context, which the verifier refuses.
#define barrier_var(var) asm volatile("" : "+r"(var))

static __always_inline void count(int slot) {
    u64 *c = counters.lookup(&slot);
    if (c)
        __sync_fetch_and_add(c, 1);
}

// Peer class of (peer address as IPv6 or v4-mapped, remote port, local port).
static __always_inline u8 classify(struct cidr_key *k, u16 rport, u16 lport) {
    u32 w = rport >> 3;
    u64 *v = port_class.lookup(&w);
    u8 pc = v ? (u8)(*v >> ((rport & 7) * 8)) : 0;
    if (pc)
        return pc - 1;
    w = lport >> 3;
    v = port_class.lookup(&w);
    pc = v ? (u8)(*v >> ((lport & 7) * 8)) : 0;
    if (pc)
        return pc - 1;
    k->prefixlen = 128;
    u8 *c = policy_cidrs.lookup(k);
    return c ? *c : 0;
}

static __always_inline void v4_key(struct cidr_key *k, const u8 *a4) {
    __builtin_memset(k, 0, sizeof(*k));
    k->addr[10] = 0xff;
    k->addr[11] = 0xff;
    k->addr[12] = a4[0];
    k->addr[13] = a4[1];
    k->addr[14] = a4[2];
    k->addr[15] = a4[3];
}

static __always_inline struct class_stats *class_stats(u8 cls) {
    u32 i = cls < MAX_CLASSES ? cls : 0;
    return stats.lookup(&i);
}

#ifdef TRACEPOINT_FALLBACK
// ---- tracepoint: opens and failed connects, where sock_ops cannot run ----------------------------------
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6)  // IPPROTO_TCP
        return 0;
    int old = args->oldstate, new = args->newstate;
    int kind;
    if (new == S_ESTABLISHED && old == S_SYN_SENT)
        kind = 0;
    else if (new == S_ESTABLISHED && old == S_SYN_RECV)
        kind = 1;
    else if (new == S_CLOSE && old == S_SYN_SENT)
        kind = 2;
    else
        return 0;
    struct cidr_key k;
    if (args->family == 2) {
        v4_key(&k, args->daddr);
    } else {
        __builtin_memset(&k, 0, sizeof(k));
        __builtin_memcpy(k.addr, args->daddr_v6, 16);
    }
    struct class_stats *s = class_stats(classify(&k, args->dport, args->sport));
    if (!s)
        return 0;
    if (kind == 2)
        __sync_fetch_and_add(&s->connect_failed, 1);
    else
        __sync_fetch_and_add(&s->opens[kind], 1);
    return 0;
}
#endif

#ifndef NO_SOCK_OPS
// ---- sock_ops: per-socket state and exact totals at close ------------------------------------------------
static __always_inline u8 classify_ops(struct bpf_sock_ops *skops) {
    struct cidr_key k;
    __builtin_memset(&k, 0, sizeof(k));
    if (skops->family == 2) {
        u32 a = skops->remote_ip4;  // network order: bytes in address order in memory
        k.addr[10] = 0xff;
        k.addr[11] = 0xff;
        __builtin_memcpy(&k.addr[12], &a, 4);
    } else {
        u32 a[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3]};
        __builtin_memcpy(k.addr, a, 16);
    }
    return classify(&k, (u16)bpf_ntohl(skops->remote_port), (u16)skops->local_port);
}

static __always_inline u64 current_cgroup(void) {
#ifdef NO_CURRENT_CGROUP
    return 0;
#else
    return bpf_get_current_cgroup_id();
#endif
}

static __always_inline void add_totals(struct totals *dst, struct totals *t) {
    __sync_fetch_and_add(&dst->sent, t->sent);
    __sync_fetch_and_add(&dst->received, t->received);
    __sync_fetch_and_add(&dst->retrans, t->retrans);
    __sync_fetch_and_add(&dst->segs_out, t->segs_out);
}

static __always_inline void rtt_observe(struct class_stats *s, u32 us) {
    // Bounds in microseconds, as decode.RTT_BOUNDS_US.
    u32 b = 16;
    if (us <= 25) b = 0;
    else if (us <= 50) b = 1;
    else if (us <= 100) b = 2;
    else if (us <= 250) b = 3;
    else if (us <= 500) b = 4;
    else if (us <= 1000) b = 5;
    else if (us <= 2500) b = 6;
    else if (us <= 5000) b = 7;
    else if (us <= 10000) b = 8;
    else if (us <= 25000) b = 9;
    else if (us <= 50000) b = 10;
    else if (us <= 100000) b = 11;
    else if (us <= 250000) b = 12;
    else if (us <= 500000) b = 13;
    else if (us <= 1000000) b = 14;
    else if (us <= 2500000) b = 15;
    __sync_fetch_and_add(&s->rtt_bucket[b], 1);
    __sync_fetch_and_add(&s->rtt_sum_us, us);  // (the count is the buckets' sum: one atomic fewer per close)
}

// A free slot of `live` for this socket, claimed with compare-and-swap: a softirq can interrupt a run on
// the same CPU, and another CPU's cursor can reach the same slots. 1: listed.
static __always_inline int claim_slot(struct sk_state *st, u64 cookie, struct live_sock *ls) {
    u32 zero = 0, one = 1;
    u32 *hint = live_cursor.lookup(&one);
    if (hint && *hint) {
        u32 idx = (*hint - 1) % LIVE_ENTRIES;
        *hint = 0;
        struct live_slot *sl = live.lookup(&idx);
        if (sl && __sync_val_compare_and_swap(&sl->cookie, 0, LIVE_BUSY) == 0) {
            __builtin_memcpy(&sl->s, ls, sizeof(*ls));
            __sync_lock_test_and_set(&sl->cookie, cookie);
            st->slot = idx;
            return 1;
        }
    }
    u32 *cur = live_cursor.lookup(&zero);
    if (!cur)
        return 0;
    u32 start = *cur + bpf_get_smp_processor_id() * 4099;
#pragma unroll
    for (u32 i = 0; i < LIVE_PROBES; i++) {
        u32 idx = (start + i) % LIVE_ENTRIES;
        struct live_slot *sl = live.lookup(&idx);
        if (!sl)
            return 0;
        if (__sync_val_compare_and_swap(&sl->cookie, 0, LIVE_BUSY) != 0)
            continue;
        __builtin_memcpy(&sl->s, ls, sizeof(*ls));
        __sync_lock_test_and_set(&sl->cookie, cookie);  // published after the rest (a full barrier)
        st->slot = idx;
        *cur += i + 1;
        return 1;
    }
    *cur += LIVE_PROBES;
    return 0;
}

static __always_inline int on_established(struct bpf_sock_ops *skops, u8 dir) {
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return 1;
    struct sk_state *st = sk_state.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!st) {
        count(C_STORAGE_FAIL);
        return 1;
    }
    u32 zero = 0;
    u64 *g = gen.lookup(&zero);
    st->gen_open = g ? (u32)*g : 0;
    st->cls = classify_ops(skops);
    st->dir = dir;
    st->tracked = 1;
    u32 flags = skops->bpf_sock_ops_cb_flags;
    if (!(flags & BPF_SOCK_OPS_STATE_CB_FLAG))  // an active open has it since its connect
        bpf_sock_ops_cb_flags_set(skops, flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    struct class_stats *s = class_stats(st->cls);
    if (s)
        __sync_fetch_and_add(&s->opens[dir], 1);

    u32 *dump_all = dumping.lookup(&zero);
    if (dump_all && *dump_all) {
        st->listed = 1;  // every socket is read by the dumps
        return 1;
    }
    struct live_sock ls = {};
    ls.netns = bpf_get_netns_cookie(skops);
    ls.cgroup = st->cgroup;
    ls.family = skops->family;
    ls.cls = st->cls;
    ls.dir = dir;
    ls.lport = (u16)skops->local_port;
    ls.rport = (u16)bpf_ntohl(skops->remote_port);
    // Every address field read first, each at its own constant offset: branches that load them let the
    // compiler form a pointer into the context, which the verifier refuses.
    u32 l4 = skops->local_ip4, r4 = skops->remote_ip4;
    u32 l[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3]};
    u32 r[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3]};
    barrier_var(l4);
    barrier_var(r4);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        barrier_var(l[i]);
        barrier_var(r[i]);
    }
    if (skops->family == 2) {
        __builtin_memcpy(ls.laddr, &l4, 4);
        __builtin_memcpy(ls.raddr, &r4, 4);
    } else {
        __builtin_memcpy(ls.laddr, l, 16);
        __builtin_memcpy(ls.raddr, r, 16);
    }
    u64 cookie = get_cookie(skops);
    if (claim_slot(st, cookie, &ls)) {
        st->listed = 2;
    } else {
        // No room: nobody reads this socket while it is open, so its totals are aggregated at close.
        st->listed = 0;
        count(C_LIVE_OVERFLOW);
    }
    return 1;
}

static __always_inline int on_close(struct bpf_sock_ops *skops, u32 oldstate) {
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return 1;
    struct sk_state *st = sk_state.sk_storage_get(sk, 0, 0);
    u8 dir = DIR_UNKNOWN, cls, orphan = 0, fw2_advanced = 0, listed = 0;
    u64 cgroup = 0;
    u32 gen_open = 0;
    if (st)
        fw2_advanced = st->fw2 && st->fw2_rcv_nxt != skops->rcv_nxt;
    if (st && st->tracked) {
        dir = st->dir;
        cls = st->cls;
        cgroup = st->cgroup;
        gen_open = st->gen_open;
        listed = st->listed;
    } else {
        // STATE_CB is on, so an earlier instance of this program set it up: report the socket anyway.
        orphan = 1;
        cls = classify_ops(skops);
        count(C_ORPHAN_CLOSES);
    }
    // Exact payload: bytes_acked counts the SYN of an active open and our FIN once acked; bytes_received
    // counts the peer's FIN once this socket processed it. Our FIN is in when it was sent (the states after
    // ESTABLISHED that we closed from) and nothing is outstanding. The peer's FIN is in when we closed from
    // CLOSE_WAIT, LAST_ACK or CLOSING; from FIN_WAIT2 only when sequence space arrived after entering it: a
    // socket the application closed goes from FIN_WAIT2 to a timewait socket at once, and the peer's FIN
    // then reaches only the timewait socket.
    u64 acked = skops->bytes_acked, received = skops->bytes_received;
    u64 sub = 0;
    if (dir == DIR_ACTIVE)
        sub += 1;
    if ((oldstate == S_FIN_WAIT2 || oldstate == S_CLOSING || oldstate == S_LAST_ACK ||
         oldstate == S_FIN_WAIT1) && skops->snd_una == skops->snd_nxt)
        sub += 1;
    struct totals t = {};
    t.sent = acked > sub ? acked - sub : 0;
    u64 fin_in = (oldstate == S_CLOSING || oldstate == S_LAST_ACK || oldstate == S_CLOSE_WAIT ||
                  (oldstate == S_FIN_WAIT2 && fw2_advanced)) ? 1 : 0;
    t.received = received > fin_in ? received - fin_in : 0;
    t.retrans = skops->total_retrans;
    t.segs_out = skops->segs_out;
    u32 srtt = skops->srtt_us >> 3;

    struct class_stats *s = class_stats(cls);
    if (s) {
        if (dir < 2)
            __sync_fetch_and_add(&s->closes[dir], 1);
        if (srtt)
            rtt_observe(s, srtt);
    }

    if (listed == 2 && st) {  // (st is set whenever listed is: the verifier needs to see it)
        u32 idx = st->slot;  // this socket's own: only its close frees it
        struct live_slot *sl = live.lookup(&idx);
        if (sl) {
            sl->cookie = 0;
            u32 one = 1;
            u32 *hint = live_cursor.lookup(&one);
            if (hint)
                *hint = idx + 1;
        }
    }
    u32 zero = 0;
    u64 *g = gen.lookup(&zero);
    u64 gv = g ? *g : 0;
    if (orphan || (listed && ((gv & 1) || (u32)gv != gen_open))) {
        // Lived across a read of live sockets, or closed during one: user space may have counted part of it.
        // (An orphan was set up by an earlier probe, whose reads user space may have counted.)
        u64 cookie = get_cookie(skops);
        struct record r = {};
        r.t = t;
        r.cgroup = cgroup;
        r.srtt_us = srtt;
        r.cls = cls;
        r.dir = dir;
        r.flags = orphan ? REC_ORPHAN : 0;
        r.oldstate = oldstate;
        if (records.update(&cookie, &r) == 0)
            count(C_RECORDS);
        else
            count(C_RECORDS_LOST);
        return 1;
    }
    // Opened and closed between two reads, or never listed: nobody has seen it, aggregate in the kernel.
    count(C_AGG_CLOSES);
    struct agg_key ak = {.cls = cls, .pad = 0, .cgroup = cgroup};
    struct totals *a = agg.lookup(&ak);
    if (!a) {
        struct totals zero_t = {};
        agg.insert(&ak, &zero_t);
        a = agg.lookup(&ak);
    }
    if (!a) {
        count(C_AGG_OVERFLOW);
        u32 i = cls < MAX_CLASSES ? cls : 0;
        a = agg_overflow.lookup(&i);
        if (!a)
            return 1;
    }
    add_totals(a, &t);
    return 1;
}

int tcpflow_ops(struct bpf_sock_ops *skops) {
    u32 op = skops->op;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        u32 newstate = skops->args[1], oldstate = skops->args[0];
        if (newstate == S_CLOSE && oldstate == S_SYN_SENT) {
            struct class_stats *s = class_stats(classify_ops(skops));
            if (s)
                __sync_fetch_and_add(&s->connect_failed, 1);
            return 1;
        }
        if (newstate == S_CLOSE)
            return on_close(skops, oldstate);
        if (newstate == S_FIN_WAIT2) {
            // Created here for a socket an earlier probe set up (an orphan at close), which has none yet.
            struct bpf_sock *sk = skops->sk;
            struct sk_state *st = sk ? sk_state.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
            if (st) {
                st->fw2_rcv_nxt = skops->rcv_nxt;
                st->fw2 = 1;
            }
        }
        return 1;
    }
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return on_established(skops, DIR_ACTIVE);
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return on_established(skops, DIR_PASSIVE);
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
        // Process context: the task that connects or listens owns the socket (and a listener's accepted
        // sockets, through the storage clone).
        struct bpf_sock *sk = skops->sk;
        if (!sk)
            return 1;
        struct sk_state *st = sk_state.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!st) {
            count(C_STORAGE_FAIL);
            return 1;
        }
        st->cgroup = current_cgroup();
        st->tracked = 0;
        if (op == BPF_SOCK_OPS_TCP_CONNECT_CB)  // to see a connect fail (SYN_SENT -> CLOSE)
            bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    }
    return 1;
}
#endif
