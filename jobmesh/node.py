"""``jobmesh.Node``: one node's actors, started in order and stopped in reverse.

Embedded use needs no sockets: with ``bind=None`` and ``http=None`` a node is just
the store, the engine (queues, slots, consumers: ``engine/``) and the job manager. The
discovery and HTTP actors are started when configured and importable.

The node is the host its parts are given at construction (``EngineHost``,
``DiscoveryHost``, ``TransferHost``): it routes their messages to each other, so no part
holds another's attributes and no hook is patched in after construction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import os
from . import clock as _clock
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import structlog

from .actor import Actor, ActorSystem
from .config import NodeConfig, QueueConfig
from .consumers.registry import ConsumerIndex, ConsumerSpec, check_new_consumer, consumers_in_module, spec_of
from .datadir import DataDirLock
from .discovery.view import InstanceView, TopologyEvent, TopologyEventType, TopologyView
from .events import EventBus
from .store import Store

if TYPE_CHECKING:
    from .engine.actor import EngineActor

log = structlog.get_logger("jobmesh.node")

_UNSET: Any = object()


class Node:
    """A jobmesh node (DESIGN §5.3). ``async with Node(...) as node:`` or ``start()``/``stop()``."""

    def __init__(self, name: str | None = None, data_dir: str | os.PathLike[str] | None = None,
                 bind: str | None = _UNSET, seeds: list[str] | None = None, http: str | None = _UNSET,
                 capacity: int | None = None, config: NodeConfig | None = None,
                 queues: list[QueueConfig] | None = None, clock: Callable[[], float] = _clock.wall,
                 transport: Callable[..., Any] | None = None, **overrides: Any) -> None:
        # the network this node talks over: ZeroMQ unless given (the simulator gives its own)
        self.transport_factory = transport
        cfg = dataclasses.replace(config) if config is not None else NodeConfig()
        if config is None:
            # Embedded default: no sockets unless asked for (the CLI passes a full config).
            cfg.bind = None  # type: ignore[assignment]
            cfg.http = None
        if name is not None:
            cfg.name = name
        if data_dir is not None:
            cfg.data = str(data_dir)
        if bind is not _UNSET:
            cfg.bind = bind  # type: ignore[assignment]
        if seeds is not None:
            cfg.seeds = list(seeds)
        if http is not _UNSET:
            cfg.http = http
        if capacity is not None:
            cfg.capacity = capacity
        if queues is not None:
            cfg.queues = list(queues)
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"Node() got an unknown option {key!r}")
            setattr(cfg, key, value)
        cfg.validate()
        from .log import ensure_logging
        ensure_logging(cfg.log_format)  # before any actor binds a logger: never structlog's default (stdout)
        self.config = cfg
        self.name = cfg.name
        self.clock = clock
        self.started_at = clock()
        self.events = EventBus()
        self.log = log.bind(node=self.name)
        self._system = ActorSystem(on_escalate=self._on_escalate)
        self._data_lock = DataDirLock(cfg.data, cfg.name)
        self.store = Store(Path(cfg.data) / "jobs.db", durability=cfg.durability, clock=clock)
        # job payload: the blob store and its transfers (jobmesh.blobs), started after the job store;
        # the engine (consumers' payload), the manager (adds, reads) and the transfer read its store
        from .blobs.actor import BlobActor
        self.blobs = BlobActor(self)
        # Offloading (DESIGN §2 transfer/offloader): per-node settings decide what runs here, even
        # this node's own jobs; with a transfer endpoint, jobs move between nodes.
        from .offloading import OffloadSettings
        self.offload_settings = OffloadSettings.load(cfg.data, cfg.offloading.enabled_topics,
                                                     cfg.offloading.disabled_topics)
        self.consumers = ConsumerIndex()
        if cfg.bind:
            self.store.local_name = cfg.name
        # the engine and the manager are imported here: ``import jobmesh`` (a CLI, a client) stays light
        from .engine.actor import EngineActor
        from .manager import JobManager

        self.engine = EngineActor(self, cfg, self.store, self.consumers, clock=clock, offloading=bool(cfg.bind),
                                  blobs=self.blobs.store)
        self.jobs = JobManager(cfg, self.store, self.events, self.engine, clock=clock, on_added=self._jobs_added,
                               consumers=self.consumers, blobs=self.blobs.store)
        for actor in (self.store, self.jobs, self.engine):
            actor.log = actor.log.bind(node=cfg.name)  # every engine log line names its node
        self.transfer: Any = None
        self.offloader: Any = None
        if cfg.bind:
            from .transfer.actor import TransferActor
            self.transfer = TransferActor(self)
        self._pending_consumers: list[ConsumerSpec] = []
        self._starting: list[ConsumerSpec] = []  # ConsumerActors added while running, starting up
        self._consumer_actors: list[Actor] = []
        self.discovery: Any = None
        self.schedules: Any = None  # SchedulerActor once started
        self.workflows: Any = None  # WorkflowActor once started
        self.http: Any = None
        self.http_url: str | None = None
        self._properties: dict[str, Any] = {}
        self._running = False
        self._stopping = False
        self.stopped = asyncio.Event() if _has_loop() else None
        self.escalated: BaseException | None = None
        self.fatal: Exception | None = None  # why a part stopped the node (e.g. its name is taken)
        self._watchdog: Any = None

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> "Node":
        if self._running:
            return self
        if self.stopped is None:
            self.stopped = asyncio.Event()
        self.stopped.clear()
        self.started_at = self.clock()
        # Before anything opens a file there: DataDirInUse leaves nothing started.
        self._data_lock.acquire(self.started_at)
        self.started_at = self._next_incarnation(self.started_at)
        try:
            await self._start_actors()
        except BaseException:
            self.log.error("node failed to start; stopping what was started")
            await self._system.stop_all()
            self._data_lock.release()
            raise
        self._running = True
        from .tasks import node_started
        node_started(self)  # the default producer of task.send() in this process
        self._start_watchdog()
        self._publish_offloading()  # in the properties before discovery reads them
        await self._start_optional_guarded()
        self.log.info("node started", data=self.config.data, queues=[q.name for q in self.config.all_queues()],
                      consumers=self.consumer_topics(), http=self.http_url)
        return self

    def _next_incarnation(self, now: float) -> float:
        """This start's incarnation: the start time, but always above the last one this data
        directory had. Peers tell a restarted node from a stale process by it, so it must grow
        even when the clock went back (NTP, a VM restored, a container with another clock)."""
        path = Path(self.config.data) / INCARNATION_FILE
        try:
            last = float(path.read_text().strip() or 0.0)
        except (OSError, ValueError):
            last = 0.0
        inc = now if now > last else last + 0.001
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(repr(inc))
            os.replace(tmp, path)
        except OSError as e:
            self.log.warning("incarnation not saved", error=str(e))
        return inc

    async def _start_optional_guarded(self) -> None:
        try:
            await self._start_optional()
        except BaseException:
            self._running = False
            await self._system.stop_all()
            self._data_lock.release()
            raise

    async def _start_actors(self) -> None:
        system = self._system
        await system.start(self.store)
        await system.start(self.blobs)
        for spec in self._pending_consumers:
            if spec.actor is not None:
                await system.start(spec.actor)
            self.engine.add_spec(spec)
        self._pending_consumers.clear()
        await system.start(self.engine)  # recovers what a crash interrupted, before anyone counts
        await system.start(self.jobs)

    async def _start_optional(self) -> None:
        if self.config.bind:
            try:
                mod = importlib.import_module("jobmesh.discovery.actor")
            except ImportError as e:
                self.log.warning("discovery not available; running as a single node", error=str(e))
            else:
                self.discovery = mod.DiscoveryActor(self)
                await self._system.start(self.discovery)
                self.blobs.attach_network()
                if self.transfer is not None:
                    from .offloader.actor import OffloaderActor
                    from .offloader.policy import PolicyConfig
                    await self._system.start(self.transfer)
                    self.offloader = OffloaderActor(
                        self, PolicyConfig(transfer_rate=float(self.config.offloading.transfer_rate)))
                    await self._system.start(self.offloader)
        from .scheduler.actor import SchedulerActor  # node.schedules: after discovery, before HTTP
        self.schedules = SchedulerActor(self)
        await self._system.start(self.schedules)
        from .workflow.actor import WorkflowActor  # node.workflows: after the scheduler, before HTTP
        self.workflows = WorkflowActor(self)
        await self._system.start(self.workflows)
        if self.config.http:
            try:
                mod = importlib.import_module("jobmesh.http")
                http_cls = mod.HttpActor
            except (ImportError, AttributeError) as e:
                self.log.warning("HTTP API not available", error=str(e))
            else:
                self.http = http_cls(self)
                await self._system.start(self.http)
                self.http_url = getattr(self.http, "url", None) or f"http://{self.config.http}"
                self.set_property("http_url", self.http_url)  # members point clients here (a job's origin)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: stop taking jobs, let running ones finish for ``grace`` s, persist the rest."""
        if self._stopping and self.stopped is not None:
            await self.stopped.wait()  # someone else is stopping it: return once it is down
            return
        if not self._running:
            return
        self._stopping = True
        from .tasks import node_stopped
        node_stopped(self)
        grace = self.config.shutdown_grace if grace is None else grace
        self.jobs.accepting = False
        try:
            try:
                left = await asyncio.wait_for(self.engine.drain(grace), grace + 10.0)
                if left:
                    self.log.warning("running jobs interrupted by shutdown; back to QUEUED", jobs=left)
            except Exception as exc:
                self.log.error("drain failed", error=repr(exc))
            try:  # the last outcomes are written: make them durable
                await asyncio.wait_for(self.store.flush(), 10.0)
            except Exception as exc:
                self.log.error("final store flush failed", error=repr(exc))
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            await self._system.stop_all()
            self._data_lock.release()  # after the store closed: the next node may open it now
            self._running = False
            self._stopping = False
            if self.stopped is not None:
                self.stopped.set()
            self.log.info("node stopped")

    async def __aenter__(self) -> "Node":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._running

    def _on_escalate(self, actor: Actor, exc: BaseException) -> Any:
        """An actor kept crashing: shut the node down cleanly rather than limp on."""
        self.escalated = exc
        self.log.critical("actor escalated; shutting the node down", actor=actor.name, error=repr(exc))
        return self.stop(grace=min(self.config.shutdown_grace, 5.0))

    def fail(self, error: Exception) -> None:
        """A part found a reason this node must not run (its name belongs to a live member):
        stop it and keep the reason, which ``jobmesh node`` prints as its one-line error."""
        if self.fatal is None:
            self.fatal = error
        if self._running and not self._stopping:
            self.log.error("node stopping", reason=str(error))
            asyncio.ensure_future(self.stop(grace=min(self.config.shutdown_grace, 5.0)))

    # -- consumers -------------------------------------------------------------
    def add_consumer(self, consumer: Any) -> ConsumerSpec:
        """Register a ``@consumer`` function, a ``ConsumerActor`` subclass or instance."""
        spec = spec_of(consumer)
        same = check_new_consumer(spec, [*self.consumers.specs, *self._pending_consumers, *self._starting])
        if same is not None:  # the same consumer twice (a module imported twice): one registration
            return same
        if not self._running:
            self._pending_consumers.append(spec)
        elif spec.actor is not None:
            self._starting.append(spec)

            async def start_then_add() -> None:
                try:
                    await self._system.start(spec.actor)  # type: ignore[arg-type]
                    self._register(spec)
                except Exception:
                    self.log.exception("consumer actor failed to start", consumer=spec.name)
                finally:
                    self._starting.remove(spec)
            asyncio.ensure_future(start_then_add())
        else:
            self._register(spec)
        return spec

    def add_consumers_from(self, module: Any) -> list[ConsumerSpec]:
        return [self.add_consumer(c) for c in consumers_in_module(module)]

    def _register(self, spec: ConsumerSpec) -> None:
        self.engine.add_spec(spec)
        self.engine.tell(_engine_events().ConsumersChanged())

    def consumer_topics(self) -> list[str]:
        pats = self.consumers.patterns()
        for spec in [*self._pending_consumers, *self._starting]:
            for p in spec.patterns:
                if p not in pats:
                    pats.append(p)
        return pats

    # -- observation -------------------------------------------------------------
    def _start_watchdog(self) -> None:
        """A thread that names the job blocking the event loop while it blocks (consumers/watchdog.py).
        Not in a simulation (a transport of its own): a real thread there would only add noise."""
        if self.transport_factory is not None:
            return
        from .consumers.watchdog import LoopWatchdog
        self._watchdog = LoopWatchdog(self.log, describe=self.describe_running_jobs)
        self._watchdog.start()

    def describe_running_jobs(self) -> list[dict[str, Any]]:
        """The jobs running here now: ``{"job_id", "topic", "consumer", "async"}`` each. ``async``
        ones run on the event loop: when the loop lags, one of them is blocking it (a sync
        ``def`` consumer would run in a thread). Safe to call from any thread (a snapshot).
        Discovery's lag warning (``_lag_monitor``) may add these to its line."""
        out = []
        for job in self.engine.running_jobs():
            spec = self.consumers.find(job.topic)
            out.append({"job_id": job.id, "topic": job.topic, "consumer": spec.name if spec else None,
                        "async": bool(spec.is_async) if spec else False})
        return out

    def capacity_snapshot(self) -> dict[str, Any]:
        load = self.engine.load()
        queued = max(0, self.jobs.queued_count())
        foreign = 0
        if self.transfer is not None:
            # own jobs waiting at another node are not this node's backlog; copies here are, but
            # only this node's own jobs can move
            queued = max(0, queued - load["waiting_elsewhere"])
            foreign = self.transfer.foreign_copies()
        return {
            "slots": load["slots"],
            "active": load["active"],
            "queued": queued,
            "throughput": load["throughput"],
            "movable": max(0, queued - foreign),
        }

    def repairs(self) -> dict[str, int]:
        """Repairs made by the level-triggered checks (DESIGN §3), by kind; each is a bug found."""
        out = {"watchdog_requeue": self.engine.repairs}
        if self.transfer is not None:
            for kind, n in self.transfer.repairs.items():
                out[kind] = out.get(kind, 0) + n
        return out

    def queue_actor(self, name: str) -> Any:
        """A queue's view (``engine.actor.QueueView``): its window, window size and watchdog period."""
        return self.engine.queue_view(name)

    @property
    def pool(self) -> EngineActor:
        """The node's slots, for readers (``free_slots()``, ``load()``): the engine holds them."""
        return self.engine

    # -- the host of the engine (EngineHost) ------------------------------------------
    def runnable(self, topic: str) -> bool:
        """A job of ``topic`` may start here: a consumer, and the topic enabled here."""
        return self.consumers.has_consumer(topic) and self.offload_settings.allows(topic)

    def notify(self, message: Any) -> None:
        """The engine's messages for the job manager (statistics, waiters, notifications), handled
        at once in the engine's turn: its handlers count and answer, with no I/O and nothing that
        waits, so a hop through its mailbox cost a task switch per commit for nothing (a synchronous
        notification listener runs here too, as it ran in the manager's turn). A bug in one is
        logged, the statistics are counted anew from the store (what the manager's restart after
        its crash did) and the engine goes on."""
        try:
            self.jobs.receive(message)
        except Exception as e:  # noqa: BLE001 - statistics must not take the engine down
            self.log.error("job manager could not take an engine message; statistics recounted",
                           message=type(message).__name__, error=repr(e))
            self.jobs.recount()

    def to_transfer(self, message: Any) -> None:
        """The engine's messages for the transfer actor (none without one: nothing is handed off)."""
        if self.transfer is not None:
            self.transfer.tell(message)

    def admits(self, topic: str) -> str | None:
        """Why a copy of another node's job of ``topic`` is refused here (None: it is not)."""
        if not self.jobs.accepting:
            return "node is shutting down"
        if not self.consumers.has_consumer(topic):
            return f"no consumer for {topic}"
        if not self.offload_settings.allows(topic):
            return f"topic {topic} is disabled here"
        return None

    def _jobs_added(self) -> None:
        """New jobs are committed: the offloader plans at once instead of at its next tick."""
        if self.offloader is not None:
            self.offloader.kick()

    # -- offloading ------------------------------------------------------------------

    def offload_topics(self) -> list[str]:
        """What this node's heartbeat advertises as enabled (read by discovery)."""
        return self.offload_settings.offload_topics(self.consumer_topics())

    def _publish_offloading(self) -> None:
        s = self.offload_settings
        try:
            self.set_property("offload_disabled_topics", s.disabled_patterns())
            self.set_property("offloading", s.to_json())
        except Exception as exc:
            self.log.warning("offloading settings not published", error=repr(exc))

    async def set_offloading(self, node_name: str, topic: str, mode: str) -> dict[str, Any]:
        """Set ``topic`` to ``mode`` (enabled|disabled|exclusive) on ``node_name``: here, or
        forwarded to that member; persisted there, advertised within one heartbeat."""
        from .errors import NotFound, ValidationError
        if node_name != self.name:
            if self.transfer is None:
                raise NotFound(f"node {node_name} is not in the topology")
            return await self.transfer.forward_settings(node_name, topic, mode)
        if not isinstance(mode, str):
            raise ValidationError("mode must be a string")
        self.offload_settings.apply(topic, mode)
        try:
            self.offload_settings.save(self.config.data)
        except OSError as exc:
            self.log.error("offloading settings not saved", error=str(exc))
        self._publish_offloading()
        self.engine.tell(_engine_events().ConsumersChanged())  # parked jobs of a topic enabled now may start
        if self.offloader is not None:
            self.offloader.kick()
        self.log.info("offloading changed", topic=topic, mode=mode)
        return {"node": self.name, "topic": topic, "mode": mode, "settings": self.offload_settings.to_json()}

    # -- topology (delegates to discovery when it runs) ------------------------
    @property
    def topology(self) -> TopologyView:
        if self.discovery is not None and getattr(self.discovery, "view", None) is not None:
            return self.discovery.view
        return self._local_view()

    def _local_view(self) -> TopologyView:
        me = InstanceView(
            name=self.name, incarnation=self.started_at,
            endpoint=self.config.advertise_endpoint if self.config.bind else None,
            pub_endpoint=self.config.advertise_pub_endpoint if self.config.bind else None,
            topics=tuple(self.consumer_topics()), offload_topics=tuple(self.offload_topics()),
            capacity=self.capacity_snapshot(), properties=dict(self._properties),
            leader=True, local=True,
        )
        return TopologyView(local=self.name, leader=self.name, instances=(me,), current=True)

    def add_topology_listener(self, callback: Callable[[TopologyEvent], Any]) -> None:
        if self.discovery is not None and hasattr(self.discovery, "add_listener"):
            self.discovery.add_listener(callback)
            return
        res = callback(TopologyEvent(TopologyEventType.TOPOLOGY_INIT, None, self._local_view()))
        if inspect.isawaitable(res):
            asyncio.ensure_future(res)

    def set_property(self, key: str, value: Any) -> None:
        if self.discovery is not None and hasattr(self.discovery, "set_property"):
            self.discovery.set_property(key, value)
        self._properties[key] = value

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self._properties)


INCARNATION_FILE = "incarnation"  # the last start's incarnation (see Node._next_incarnation)


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _engine_events() -> Any:
    from .engine import events

    return events
