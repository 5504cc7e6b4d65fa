from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="detail",
            field=models.TextField(
                blank=True,
                help_text="What the provider said about how the reply ended (for the operator, "
                "never shown in the chat, API key removed).",
            ),
        ),
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
                ],
                default="complete",
                max_length=16,
            ),
        ),
    ]
