"""Version 1 of the database: the schema of release c7472f1, frozen.

Exactly what that release's ``core/models.py`` made (peewee's ``create_tables``), as SQL, so
that migration step 1 means the same thing for ever, whatever ``models.py`` says later. Never
edit it: a change to the schema is a new step in ``core/migrations.py``.
"""

STATEMENTS = (
    'CREATE TABLE "group" ('
    '"id" INTEGER NOT NULL PRIMARY KEY, '
    '"jid" VARCHAR(255) NOT NULL, '
    '"name" VARCHAR(255) NOT NULL, '
    '"folder" VARCHAR(255) NOT NULL, '
    '"trigger" VARCHAR(255) NOT NULL, '
    '"requires_trigger" INTEGER NOT NULL, '
    '"is_main" INTEGER NOT NULL, '
    '"added_at" REAL NOT NULL, '
    '"policy" VARCHAR(255), '
    '"model" VARCHAR(255))',
    'CREATE UNIQUE INDEX "group_jid" ON "group" ("jid")',
    'CREATE UNIQUE INDEX "group_folder" ON "group" ("folder")',
    'CREATE TABLE "allowedsender" ('
    '"id" INTEGER NOT NULL PRIMARY KEY, '
    '"group_id" INTEGER NOT NULL, '
    '"sender" VARCHAR(255) NOT NULL, '
    '"request" INTEGER, '
    '"added_at" REAL NOT NULL, '
    'FOREIGN KEY ("group_id") REFERENCES "group" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "allowedsender_group_id" ON "allowedsender" ("group_id")',
    'CREATE UNIQUE INDEX "allowedsender_group_id_sender" ON "allowedsender" ("group_id", "sender")',
    'CREATE TABLE "budgetlimit" ('
    '"scope" VARCHAR(255) NOT NULL, '
    '"period" VARCHAR(255) NOT NULL, '
    '"unit" VARCHAR(255) NOT NULL, '
    '"limit" REAL NOT NULL, '
    '"set_by" VARCHAR(255) NOT NULL, '
    '"set_at" REAL NOT NULL, '
    'PRIMARY KEY ("scope", "period", "unit"))',
    'CREATE TABLE "cursor" ('
    '"group_id" INTEGER NOT NULL, '
    '"agent" VARCHAR(255) NOT NULL DEFAULT \'\', '
    '"last_message_id" INTEGER NOT NULL, '
    '"failures" INTEGER NOT NULL, '
    '"retry_at" REAL NOT NULL, '
    'PRIMARY KEY ("group_id", "agent"), '
    'FOREIGN KEY ("group_id") REFERENCES "group" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "cursor_group_id" ON "cursor" ("group_id")',
    'CREATE TABLE "job" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"group_id" INTEGER NOT NULL, '
    '"agent" VARCHAR(255) NOT NULL DEFAULT \'\', '
    '"status" VARCHAR(255) NOT NULL, '
    '"created_at" REAL NOT NULL, '
    '"started_at" REAL, '
    '"finished_at" REAL, '
    '"container" VARCHAR(255) NOT NULL, '
    '"exit_code" INTEGER, '
    '"error" TEXT NOT NULL, '
    '"closing" INTEGER NOT NULL, '
    '"task_run" INTEGER, '
    'FOREIGN KEY ("group_id") REFERENCES "group" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "job_group_id" ON "job" ("group_id")',
    'CREATE INDEX "job_status" ON "job" ("status")',
    'CREATE TABLE "message" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"chat" VARCHAR(255) NOT NULL, '
    '"sender" VARCHAR(255) NOT NULL, '
    '"sender_name" VARCHAR(255) NOT NULL, '
    '"text" TEXT NOT NULL, '
    '"timestamp" REAL NOT NULL, '
    '"channel_id" VARCHAR(255) NOT NULL, '
    '"from_me" INTEGER NOT NULL, '
    '"is_bot" INTEGER NOT NULL, '
    '"outbox_id" INTEGER, '
    '"agent" VARCHAR(255), '
    '"chain" INTEGER, '
    '"depth" INTEGER NOT NULL DEFAULT 0, '
    '"answers" INTEGER, '
    '"media" TEXT)',
    'CREATE INDEX "message_chat" ON "message" ("chat")',
    'CREATE INDEX "message_outbox_id" ON "message" ("outbox_id")',
    'CREATE INDEX "message_chain" ON "message" ("chain")',
    'CREATE INDEX "message_answers" ON "message" ("answers")',
    'CREATE UNIQUE INDEX "message_chat_channel_id" ON "message" ("chat", "channel_id")',
    'CREATE TABLE "mount" ('
    '"id" INTEGER NOT NULL PRIMARY KEY, '
    '"group_id" INTEGER NOT NULL, '
    '"name" VARCHAR(255) NOT NULL, '
    '"host_path" VARCHAR(255) NOT NULL, '
    '"rw" INTEGER NOT NULL, '
    '"added_at" REAL NOT NULL, '
    'FOREIGN KEY ("group_id") REFERENCES "group" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "mount_group_id" ON "mount" ("group_id")',
    'CREATE UNIQUE INDEX "mount_group_id_name" ON "mount" ("group_id", "name")',
    'CREATE TABLE "outbox" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"key" VARCHAR(255) NOT NULL, '
    '"chat" VARCHAR(255) NOT NULL, '
    '"text" TEXT NOT NULL, '
    '"kind" VARCHAR(255) NOT NULL, '
    '"sender" VARCHAR(255) NOT NULL DEFAULT \'\', '
    '"reply_to" INTEGER, '
    '"status" VARCHAR(255) NOT NULL, '
    '"attempts" INTEGER NOT NULL, '
    '"next_attempt_at" REAL NOT NULL, '
    '"created_at" REAL NOT NULL, '
    '"sent_at" REAL, '
    '"channel_id" VARCHAR(255) NOT NULL, '
    '"error" TEXT NOT NULL)',
    'CREATE UNIQUE INDEX "outbox_key" ON "outbox" ("key")',
    'CREATE INDEX "outbox_chat" ON "outbox" ("chat")',
    'CREATE INDEX "outbox_status" ON "outbox" ("status")',
    'CREATE TABLE "request" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"kind" VARCHAR(255) NOT NULL, '
    '"chat" VARCHAR(255) NOT NULL, '
    '"sender" VARCHAR(255) NOT NULL, '
    '"chat_name" VARCHAR(255) NOT NULL, '
    '"sender_name" VARCHAR(255) NOT NULL, '
    '"members" INTEGER, '
    '"message" INTEGER NOT NULL, '
    '"status" VARCHAR(255) NOT NULL, '
    '"created_at" REAL NOT NULL, '
    '"expires_at" REAL NOT NULL, '
    '"decided_at" REAL, '
    '"decided_by" VARCHAR(255) NOT NULL, '
    '"folder" VARCHAR(255) NOT NULL)',
    'CREATE INDEX "request_chat" ON "request" ("chat")',
    'CREATE INDEX "request_status" ON "request" ("status")',
    'CREATE TABLE "session" ('
    '"group_id" INTEGER NOT NULL, '
    '"agent" VARCHAR(255) NOT NULL DEFAULT \'\', '
    '"session_id" VARCHAR(255) NOT NULL, '
    '"updated_at" REAL NOT NULL, '
    'PRIMARY KEY ("group_id", "agent"), '
    'FOREIGN KEY ("group_id") REFERENCES "group" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "session_group_id" ON "session" ("group_id")',
    'CREATE TABLE "task" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"group_id" INTEGER NOT NULL, '
    '"chat" VARCHAR(255) NOT NULL, '
    '"prompt" TEXT NOT NULL, '
    '"schedule_type" VARCHAR(255) NOT NULL, '
    '"schedule_value" VARCHAR(255) NOT NULL, '
    '"timezone" VARCHAR(255) NOT NULL, '
    '"context_mode" VARCHAR(255) NOT NULL, '
    '"status" VARCHAR(255) NOT NULL, '
    '"next_run" REAL, '
    '"last_run" REAL, '
    '"last_result" TEXT NOT NULL, '
    '"created_at" REAL NOT NULL, '
    '"created_by" VARCHAR(255) NOT NULL, '
    '"precheck" TEXT NOT NULL DEFAULT \'\', '
    'FOREIGN KEY ("group_id") REFERENCES "group" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "task_group_id" ON "task" ("group_id")',
    'CREATE INDEX "task_status" ON "task" ("status")',
    'CREATE TABLE "taskrun" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"task_id" INTEGER NOT NULL, '
    '"fire_key" VARCHAR(255) NOT NULL, '
    '"due_at" REAL, '
    '"fired_at" REAL NOT NULL, '
    '"started_at" REAL, '
    '"finished_at" REAL, '
    '"status" VARCHAR(255) NOT NULL, '
    '"attempts" INTEGER NOT NULL, '
    '"retry_at" REAL NOT NULL, '
    '"result" TEXT NOT NULL, '
    '"error" TEXT NOT NULL, '
    'FOREIGN KEY ("task_id") REFERENCES "task" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "taskrun_task_id" ON "taskrun" ("task_id")',
    'CREATE UNIQUE INDEX "taskrun_fire_key" ON "taskrun" ("fire_key")',
    'CREATE INDEX "taskrun_status" ON "taskrun" ("status")',
    'CREATE TABLE "turn" ('
    '"id" INTEGER NOT NULL PRIMARY KEY, '
    '"job_id" INTEGER NOT NULL, '
    '"seq" INTEGER NOT NULL, '
    '"first_message_id" INTEGER NOT NULL, '
    '"last_message_id" INTEGER NOT NULL, '
    '"status" VARCHAR(255) NOT NULL, '
    '"sent_at" REAL NOT NULL, '
    '"done_at" REAL, '
    'FOREIGN KEY ("job_id") REFERENCES "job" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "turn_job_id" ON "turn" ("job_id")',
    'CREATE UNIQUE INDEX "turn_job_id_seq" ON "turn" ("job_id", "seq")',
    'CREATE TABLE "usage" ('
    '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"at" REAL NOT NULL, '
    '"day" VARCHAR(255) NOT NULL, '
    '"group" VARCHAR(255) NOT NULL, '
    '"agent" VARCHAR(255) NOT NULL, '
    '"job" INTEGER, '
    '"model" VARCHAR(255) NOT NULL, '
    '"input_tokens" INTEGER NOT NULL, '
    '"output_tokens" INTEGER NOT NULL, '
    '"cache_write_tokens" INTEGER NOT NULL, '
    '"cache_read_tokens" INTEGER NOT NULL, '
    '"cost_usd" REAL, '
    '"streamed" INTEGER NOT NULL)',
    'CREATE INDEX "usage_day" ON "usage" ("day")',
    'CREATE INDEX "usage_group_day" ON "usage" ("group", "day")',
)
