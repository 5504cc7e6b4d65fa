from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0002_message_status_truncated_filtered"),
    ]

    operations = [
        migrations.AlterField(
            model_name="message",
            name="status",
            field=models.CharField(
                choices=[
                    ("streaming", "Streaming"),
                    ("complete", "Complete"),
                    ("stopped", "Stopped"),
                    ("error", "Error"),
                    ("truncated", "Truncated"),
                    ("filtered", "Filtered"),
                    ("interrupted", "Interrupted"),
                ],
                default="complete",
                max_length=16,
            ),
        ),
    ]
