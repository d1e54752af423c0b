/*
 * Sliding-window rate limits per client: see ratelimit.h.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "jwks_error.h"
#include "ratelimit.h"
#include "signer.h"

#define RL_KEY_MAX 47

/* One client: its key and the ring of its last request times. */
struct rl_entry {
	int64_t last_ms; /* most recent use, for eviction; 0: free */
	uint16_t head;	 /* index of the oldest time in the ring */
	uint16_t count;	 /* times in the ring */
	uint8_t len;
	char key[RL_KEY_MAX];
};

struct rl_limiter {
	unsigned limit;
	int64_t window_ms;
	size_t n_sets;
	uint64_t seed;
	pthread_mutex_t *locks; /* one per set */
	struct rl_entry *entries;
	int64_t *times; /* limit per entry */
};

int rl_new(struct rl_limiter **out, unsigned limit, unsigned window_ms,
	   size_t max_bytes)
{
	struct rl_limiter *rl;
	size_t per_entry, n_entries, i;

	*out = NULL;
	if (limit > RL_LIMIT_MAX || !window_ms)
		return KS_EINVAL;
	rl = calloc(1, sizeof(*rl));
	if (!rl)
		return KS_ENOMEM;
	rl->limit = limit;
	rl->window_ms = window_ms;
	if (!limit) {
		*out = rl;
		return 0;
	}
	per_entry = sizeof(struct rl_entry) + limit * sizeof(int64_t);
	n_entries = max_bytes / per_entry / RL_WAYS * RL_WAYS;
	if (n_entries < RL_WAYS)
		n_entries = RL_WAYS;
	rl->n_sets = n_entries / RL_WAYS;
	rl->entries = calloc(n_entries, sizeof(*rl->entries));
	rl->times = calloc(n_entries * limit, sizeof(*rl->times));
	rl->locks = calloc(rl->n_sets, sizeof(*rl->locks));
	if (!rl->entries || !rl->times || !rl->locks ||
	    signer_random(&rl->seed, sizeof(rl->seed))) {
		free(rl->entries);
		free(rl->times);
		free(rl->locks);
		free(rl);
		return KS_ENOMEM;
	}
	for (i = 0; i < rl->n_sets; i++)
		pthread_mutex_init(&rl->locks[i], NULL);
	*out = rl;
	return 0;
}

void rl_free(struct rl_limiter *rl)
{
	size_t i;

	if (!rl)
		return;
	for (i = 0; i < rl->n_sets; i++)
		pthread_mutex_destroy(&rl->locks[i]);
	free(rl->locks);
	free(rl->entries);
	free(rl->times);
	free(rl);
}

size_t rl_memory(const struct rl_limiter *rl)
{
	size_t n = rl->n_sets * RL_WAYS;

	return n * (sizeof(struct rl_entry) + rl->limit * sizeof(int64_t)) +
	       rl->n_sets * sizeof(pthread_mutex_t);
}

/* FNV-1a from a secret start, then a 64-bit finalizer: picks the set. */
static uint64_t rl_hash(uint64_t seed, const unsigned char *p, size_t n)
{
	uint64_t h = 14695981039346656037ULL ^ seed;

	while (n--) {
		h ^= *p++;
		h *= 1099511628211ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* The entry of key in its set (set lock held), taking one if needed. */
static struct rl_entry *rl_entry_for(struct rl_limiter *rl, size_t set,
				     const char *key, size_t len)
{
	struct rl_entry *e = &rl->entries[set * RL_WAYS], *victim = e;
	size_t i;

	for (i = 0; i < RL_WAYS; i++) {
		if (e[i].last_ms && e[i].len == len &&
		    !memcmp(e[i].key, key, len))
			return &e[i];
		if (e[i].last_ms < victim->last_ms)
			victim = &e[i];
	}
	victim->last_ms = 0;
	victim->head = 0;
	victim->count = 0;
	victim->len = (uint8_t)len;
	memcpy(victim->key, key, len);
	return victim;
}

int rl_check(struct rl_limiter *rl, const void *client, size_t client_len,
	     int64_t now_ms, unsigned *retry_after_s)
{
	struct rl_entry *e;
	int64_t *ring, wait;
	size_t set, len = client_len < RL_KEY_MAX ? client_len : RL_KEY_MAX;
	int allowed = 1;

	if (retry_after_s)
		*retry_after_s = 0;
	if (!rl->limit)
		return 1;
	set = (size_t)(rl_hash(rl->seed, client, client_len) % rl->n_sets);
	pthread_mutex_lock(&rl->locks[set]);
	e = rl_entry_for(rl, set, client, len);
	ring = &rl->times[(size_t)(e - rl->entries) * rl->limit];
	/* Forget the times that left the window. */
	while (e->count && ring[e->head] <= now_ms - rl->window_ms) {
		e->head = (uint16_t)((e->head + 1) % rl->limit);
		e->count--;
	}
	if (e->count < rl->limit) {
		ring[(e->head + e->count) % rl->limit] = now_ms;
		e->count++;
	} else {
		allowed = 0;
		wait = ring[e->head] + rl->window_ms - now_ms;
		if (retry_after_s)
			*retry_after_s = (unsigned)((wait + 999) / 1000);
		if (retry_after_s && !*retry_after_s)
			*retry_after_s = 1;
	}
	/* A time of 0 marks a free entry: never store it as a use. */
	e->last_ms = now_ms > 0 ? now_ms : 1;
	pthread_mutex_unlock(&rl->locks[set]);
	return allowed;
}
